import type { Direction } from "./model.js";

// What a group guarantees, and whether the guarantees asked of it fit. The policy check applies admit() to the
// floors the file promises (policy/check.ts), the planner to the guests that actually join (group-tree.ts):
// one rule for both, so that what "fits" means cannot drift apart between load time and join time.

/** A group's rates in one direction, in bit/s. */
export interface GroupLimit {
  /** `average`: the group's own rate; the floors the file promises inside the group must fit under it. */
  rateBitsPerSec: number;
  /** HTB ceil: `peak`, never below `average`. */
  ceilBitsPerSec: number;
  /** `floor`: what a child group is guaranteed inside its parent, instead of its average. */
  floorBitsPerSec?: number;
}

/** A group as the planner needs it: resolved from the policy file, without how members are chosen. */
export interface GroupSpec {
  name: string;
  parent?: string;
  /** Only the directions the group shapes; the others pass its members by. */
  limits: { inbound?: GroupLimit; outbound?: GroupLimit };
}

/** Ceiling of a group in one direction (HTB ceil), or undefined if the group does not shape that direction. */
export function groupCeil(g: GroupSpec | undefined, d: Direction): number | undefined {
  return g?.limits[d]?.ceilBitsPerSec;
}

/** Rate a group (or child group) is guaranteed inside its parent: its floor, else its average. */
export function groupRate(g: GroupSpec, d: Direction): number | undefined {
  const limit = g.limits[d];
  return limit && (limit.floorBitsPerSec ?? limit.rateBitsPerSec);
}

export interface Refusal<T> {
  claim: T;
  /** What the group already held when this claim was refused. */
  heldBitsPerSec: number;
}

export interface AdmissionVerdict<T> {
  admitted: T[];
  refused: Refusal<T>[];
  /** What the group held plus every claim, admitted or not: what it would hold if it took them all. */
  totalBitsPerSec: number;
}

/**
 * Admit guarantees (members' floors, child groups' rates) into a group in order: each fits while what the group
 * already holds plus its own stays within `capacity`. A refused claim holds nothing, so a later, smaller one
 * may still fit. With no capacity the group guarantees nothing in that direction and everything fits.
 */
export function admit<T>(
  capacity: number | undefined,
  heldBitsPerSec: number,
  claims: readonly T[],
  bitsOf: (claim: T) => number,
): AdmissionVerdict<T> {
  const verdict: AdmissionVerdict<T> = { admitted: [], refused: [], totalBitsPerSec: heldBitsPerSec };
  let held = heldBitsPerSec;
  for (const claim of claims) {
    const bits = bitsOf(claim);
    verdict.totalBitsPerSec += bits;
    if (capacity !== undefined && held + bits > capacity) {
      verdict.refused.push({ claim, heldBitsPerSec: held });
      continue;
    }
    held += bits;
    verdict.admitted.push(claim);
  }
  return verdict;
}
