import type { InterfaceView } from "./types.js";

/** An interface of a listing by target dev, MAC (any case), alias or 1-based index, as `findInterface`. */
export function findInterfaceView(views: InterfaceView[], ref: string): InterfaceView | undefined {
  if (/^\d{1,4}$/.test(ref)) return views.find((v) => v.index === Number(ref));
  const mac = ref.toLowerCase();
  return (
    views.find((v) => v.dev === ref) ??
    views.find((v) => v.mac?.toLowerCase() === mac) ??
    views.find((v) => v.alias === ref)
  );
}
