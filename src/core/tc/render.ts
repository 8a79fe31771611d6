import type { Op } from "../plan/types.js";
import type { Leaf } from "../recipe.js";
import { INGRESS_HANDLE, ROOT_HANDLE } from "./handles.js";
import { renderTreeFilter } from "./tree.js";

// render(ops) -> the exact lines fed to `ip -batch -` and `tc -batch -`. Rates are written in bit/s that are
// multiples of 8 so tc's conversion to the kernel's bytes/s is exact; sizes in bytes ("b" is bytes to tc).

export interface Rendered {
  /** Before tc: create IFBs, bring them up. */
  ipPre: string[];
  tc: string[];
  /**
   * Parallel to `tc`: the devices each line needs to exist, the one it changes first. A redirect needs two: the
   * device it hangs on and the device it sends to (the kernel refuses a redirect to a device not there yet).
   */
  tcDevs: string[][];
  /** After tc: delete IFBs (only once no filter redirects to them). */
  ipPost: string[];
}

export function render(ops: Op[]): Rendered {
  const out: Rendered = { ipPre: [], tc: [], tcDevs: [], ipPost: [] };
  for (const op of ops) {
    switch (op.op) {
      case "ifb-add":
        out.ipPre.push(`link add ${op.dev} type ifb`, `link set dev ${op.dev} alias ${op.alias}`);
        break;
      case "link-up":
        out.ipPre.push(`link set dev ${op.dev} up`);
        break;
      case "ifb-del":
        out.ipPost.push(`link del dev ${op.dev}`);
        break;
      default:
        out.tc.push(renderTc(op));
        out.tcDevs.push(tcDevs(op));
    }
  }
  return out;
}

function tcDevs(op: Op): string[] {
  if ((op.op === "filter-add" || op.op === "filter-replace") && op.filter.action === "redirect")
    return [op.dev, op.filter.toDev];
  return [op.dev];
}

/**
 * The tc lines that can run while `ip` creates the `created` devices (`early`), and those that need one of them
 * (`late`), each in batch order. With nothing created there is no `ip` batch to overlap: everything is `late`.
 */
export function splitTcByCreated(
  r: Rendered,
  created: ReadonlySet<string>,
): { early: string[]; late: string[] } {
  if (created.size === 0) return { early: [], late: [...r.tc] };
  const early: string[] = [];
  const late: string[] = [];
  r.tc.forEach((line, i) => {
    (r.tcDevs[i].some((dev) => created.has(dev)) ? late : early).push(line);
  });
  return { early, late };
}

export function renderTc(op: Op): string {
  switch (op.op) {
    case "root-replace":
      return `qdisc replace dev ${op.dev} root handle ${ROOT_HANDLE} htb default ${op.defaultMinor.toString(16)}`;
    case "root-del":
      return `qdisc del dev ${op.dev} root`;
    case "class-replace": {
      const h = op.htb;
      return (
        `class replace dev ${op.dev} parent ${op.parent} classid ${op.classid} htb` +
        ` rate ${h.rateBytesPerSec * 8}bit ceil ${h.ceilBytesPerSec * 8}bit` +
        ` burst ${h.burstBytes}b cburst ${h.cburstBytes}b quantum ${h.quantumBytes}`
      );
    }
    case "class-del":
      return `class del dev ${op.dev} classid ${op.classid}`;
    case "leaf-replace":
      return `qdisc replace dev ${op.dev} parent ${op.parent} handle ${op.handle} ${renderLeaf(op.leaf)}`;
    case "hook-add":
      return op.kind === "clsact"
        ? `qdisc add dev ${op.dev} clsact`
        : `qdisc add dev ${op.dev} handle ${INGRESS_HANDLE} ingress`;
    case "hook-del":
      return `qdisc del dev ${op.dev} ${op.kind}`;
    case "filter-add":
    case "filter-replace": {
      const verb = op.op === "filter-add" ? "add" : "replace";
      const head = `filter ${verb} dev ${op.dev} ${op.hook} protocol all prio ${op.prio}`;
      const match = op.classifier === "matchall" ? "handle 1 matchall" : "u32 match u32 0 0";
      const f = op.filter;
      let action: string;
      if (f.action === "redirect") {
        action = `action mirred egress redirect dev ${f.toDev}`;
      } else {
        const police = `police rate ${f.rateBytesPerSec * 8}bit burst ${f.burstBytes}b mtu 64kb conform-exceed drop`;
        action = op.classifier === "u32" ? `${police} flowid :1` : `action ${police}`;
      }
      return `${head} ${match} ${action}`;
    }
    case "filter-del":
      return `filter del dev ${op.dev} ${op.hook} protocol all prio ${op.prio}`;
    case "tree-filter-add":
      return `filter add dev ${op.dev} parent ${ROOT_HANDLE} prio ${op.prio} protocol all ${renderTreeFilter(op.filter)}`;
    case "tree-filter-del":
      return `filter del dev ${op.dev} parent ${ROOT_HANDLE} prio ${op.prio} handle ${op.handle} protocol all u32`;
    default:
      throw new Error(`render: ${op.op} is not a tc operation`);
  }
}

export function renderLeaf(leaf: Leaf): string {
  switch (leaf.kind) {
    case "fq_codel":
      return "fq_codel";
    case "sfq":
      return `sfq limit ${leaf.limitPackets} perturb 10`;
    case "bfifo":
      return `bfifo limit ${leaf.limitBytes}`;
    case "tbf":
      // Its child qdisc (leaf.child), if any, is a leaf-replace of its own on TBF's class `<handle>1`.
      return `tbf rate ${leaf.rateBytesPerSec * 8}bit burst ${leaf.burstBytes} limit ${leaf.limitBytes}`;
  }
}
