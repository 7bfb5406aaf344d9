/**
 * A full V8 collection once a minute, for an agent that never idles.
 *
 * V8 starts its next old-generation collection at max(live × growing factor, live + 8 MiB) + the young
 * generation's capacity, the factor up to 4 when its collections look cheap (they do here: mutator
 * utilization 0.999), and the memory reducer that shrinks the heap back runs only while the program idles. A
 * busy agent's old generation then fills with promoted garbage for many minutes: RSS +0.32 MiB/min from minute
 * 7 of a soak, past 100 MiB at minute 18, with the live heap after each collection flat at 12 MB (not a leak;
 * docs/performance.md). `--heap-growing-percent` does not bound it (the 8 MiB step and the young generation's
 * capacity stay). A forced collection every minute holds the old generation near its live size; V8's own full
 * collections of this heap took 11–47 ms of the main thread each (the ring buffer holds seconds of records).
 */

/** `globalThis.gc` when V8 exposes it (`--expose-gc`, in the packaged V8 flags), else undefined. */
export function exposedGc(): (() => void) | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === "function" ? () => (gc as () => void)() : undefined;
}

export class HeapKeeper {
  #last: number;

  /** `gc` undefined: never collects (a runtime without --expose-gc: V8 alone decides). */
  constructor(
    private readonly gc: (() => void) | undefined,
    readonly everyMs = 60_000,
    nowMs: number = Date.now(),
  ) {
    this.#last = nowMs;
  }

  /** Called from a timer: collects when everyMs has passed since the last one. True: it collected. */
  tick(nowMs: number): boolean {
    if (this.gc === undefined || nowMs - this.#last < this.everyMs) return false;
    this.#last = nowMs;
    this.gc();
    return true;
  }
}
