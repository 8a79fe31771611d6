// A one-guest lab (namespaces from src/lab/topology.ts) with an engine bound to its host namespace.

import { createLab, type Lab } from "../src/lab/topology.js";
import { type Harness, harness } from "../test/helpers/netns.js";
import { onCleanup } from "./common.js";

export async function withLab<T>(fn: (lab: Lab, h: Harness) => Promise<T>): Promise<T> {
  const lab = await createLab({ guests: [{ name: "g" }] });
  let h: Harness | undefined;
  const destroy = async () => {
    await lab.destroy();
    h?.cleanup();
  };
  const unregister = onCleanup(destroy);
  try {
    h = await harness(lab);
    return await fn(lab, h);
  } finally {
    unregister();
    await destroy();
  }
}

/** libvirt's <bandwidth> unit: kB/s (1000 bytes), so 1 Mbit/s = 125. */
export const kBpsForMbit = (mbit: number): number => mbit * 125;
