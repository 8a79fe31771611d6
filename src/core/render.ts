import { ROOT_HANDLE } from "./names.js";
import type { Op } from "./plan.js";
import type { Leaf } from "./recipe.js";

// render(ops) -> the exact lines fed to `ip -batch -` and `tc -batch -`. Rates are written in bit/s that are
// multiples of 8 so tc's conversion to the kernel's bytes/s is exact; sizes in bytes ("b" is bytes to tc).

export interface Rendered {
  /** Before tc: create IFBs, bring them up. */
  ipPre: string[];
  tc: string[];
  /** After tc: delete IFBs (only once no filter redirects to them). */
  ipPost: string[];
}

export function render(ops: Op[]): Rendered {
  const out: Rendered = { ipPre: [], tc: [], ipPost: [] };
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
    }
  }
  return out;
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
        : `qdisc add dev ${op.dev} handle ffff: ingress`;
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
      return `filter add dev ${op.dev} parent ${ROOT_HANDLE} prio ${op.prio} protocol all ${op.spec}`;
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
      return `tbf rate ${leaf.rateBytesPerSec * 8}bit burst ${leaf.burstBytes} limit ${leaf.limitBytes}`;
  }
}
