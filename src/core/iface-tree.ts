import type { DirectionLimit } from "./model.js";
import type { LeafChoice } from "./policy/types.js";
import { type Capabilities, chooseLeaf, htbClass } from "./recipe.js";
import { IFACE_CLASSID, ifaceLeafHandles, ROOT_HANDLE } from "./tc/handles.js";
import type { Tree } from "./tc/tree.js";

// One interface's limit in one direction: a one-class HTB tree, on the tap's root for the direction the host
// transmits in (the guest's download; its upload on a macvtap), else on the interface's IFB, which the tap's
// ingress hook redirects into.
//
//   tap vnetN (download) / IFB vqi<hash(domain UUID, MAC)> (upload)
//   7651:  root HTB, default 7651:1 (every frame is the guest's)
//   └── 7651:1  rate = average, ceil = peak|average, burst = given|from rate, cburst from ceil
//       └── 7652:..7656: leaf qdisc (one handle per kind: bfifo, sfq, fq_codel, tbf, tbf+fq_codel)
//           └── 7657:    fq_codel under the GSO-splitting tbf 7656: (parent 7656:1), below ~54 Mbit/s
//
// The class has no siblings, so nothing is lent or borrowed: HTB only paces, and the leaf keeps the queue short.

export function interfaceTree(
  limit: DirectionLimit,
  caps: Capabilities,
  leafChoice: LeafChoice,
  /** The largest frame the tap carries (maxFrameBytes of its MTU): the leaf must pass it whole. */
  frameBytes?: number,
): Tree {
  const htb = htbClass({
    rateBitsPerSec: limit.rateBitsPerSec,
    ceilBitsPerSec: limit.ceilBitsPerSec,
    burstBytes: limit.burstBytes,
  });
  const { leaf } = chooseLeaf(htb.ceilBytesPerSec, caps, leafChoice, false, frameBytes);
  return {
    defaultMinor: 1,
    classes: [{ classid: IFACE_CLASSID, parent: ROOT_HANDLE, htb, leaf, ...ifaceLeafHandles(leaf) }],
  };
}
