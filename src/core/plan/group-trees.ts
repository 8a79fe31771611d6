import type { GroupSpec } from "../admission.js";
import { type Admission, buildGroupTree, treeKey } from "../group-tree.js";
import type { Direction } from "../model.js";
import { formatIfbAlias, groupIfbName, parseIfbAlias } from "../names.js";
import type { LeafChoice } from "../policy/types.js";
import { type Capabilities, maxFrameBytes } from "../recipe.js";
import type { ObservedLink } from "../tc/normalise.js";
import type { Diagnostic, IfbWant } from "./types.js";

// Step 2: the group IFBs and their trees. Every tree that has members (recorded or new) or still exists in the
// kernel is looked at: one with members gets its whole tree (members included) as the IFB's wanted state; one
// whose group left the policy while guests still use it is kept as it is; the others are not wanted, so the
// sweep (sweep.ts) removes their IFBs.

export interface GroupTreeWants {
  ifbs: Map<string, IfbWant>;
  /** Group IFBs to leave exactly as they are. */
  keep: Set<string>;
  notes: Diagnostic[];
}

export function groupTreeWants(
  admission: Admission,
  links: Map<string, ObservedLink>,
  groups: readonly GroupSpec[],
  caps: Capabilities,
  leafChoice: LeafChoice,
): GroupTreeWants {
  const out: GroupTreeWants = { ifbs: new Map(), keep: new Set(), notes: [] };
  const treeKeys = new Set(admission.members.keys());
  for (const link of links.values()) {
    const a = parseIfbAlias(link.alias);
    if (a?.role === "group" && a.group && a.direction) treeKeys.add(treeKey(a.group, a.direction));
  }
  for (const tk of treeKeys) {
    const [tree, direction] = tk.split("|") as [string, Direction];
    const name = groupIfbName(tree, direction);
    const members = admission.members.get(tk) ?? [];
    const top = groups.find((g) => g.name === tree && g.parent === undefined);
    if (admission.frozen.has(tk) || (!top && members.length)) {
      out.keep.add(name);
      const message = `group "${tree}" (or one of its child groups) is no longer in the policy but guests still use it; its tree is left as it is until \`virtqos apply\` runs for them`;
      // One tree per direction, one warning per group.
      if (!out.notes.some((n) => n.message === message))
        out.notes.push({ code: "GROUP_ORPHANED", level: "warning", message });
      continue;
    }
    if (!top || members.length === 0) continue;
    out.ifbs.set(name, {
      alias: formatIfbAlias({ role: "group", group: tree, direction }),
      tree: buildGroupTree(top, groups, members, direction, caps, leafChoice, (m) =>
        maxFrameBytes(m.dev ? links.get(m.dev)?.mtu : undefined),
      ),
      tag: {},
    });
  }
  return out;
}
