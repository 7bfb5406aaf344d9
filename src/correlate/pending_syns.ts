/**
 * JA4Ts of connections whose SYN is all that was seen of them yet, without an object per connection.
 *
 * Most connections' next event is their first request, when the correlator makes the connection's state and
 * takes the JA4T from here. A SYN alone — a port scanner, a load balancer's TCP health check: connected, never
 * read from, so no close record either — used to make that state at once, to be evicted 65,536 connections
 * later: long enough to outlive V8's young generation, so each one became old-generation garbage, and with
 * one such connection in two the synthetic per-connection path cost 3.6× the CPU and ~190 MiB.
 *
 * A FIFO ring of the last `capacity` SYNs (key, JA4T, time) in typed arrays, with a number-keyed index to find
 * a key's slot: an insert allocates nothing for an IPv4 connection (its key is a number); the oldest SYN goes
 * when the ring is full, and SYNs older than the idle time when `expire` is called.
 */
import type { ConnKey } from "../capture/connkey.ts";
import { HybridMap } from "../capture/nummap.ts";

export class PendingSyns {
  /** key → slot (slot = arrival counter % capacity) */
  #index = new HybridMap<ConnKey, number>();
  /** Number keys in #num; other keys (strings: IPv6, endpoints past the index table) in #str. */
  #num: Float64Array;
  #str: (string | undefined)[];
  #ja4t: string[];
  #at: Float64Array;
  /** Arrival counters: slots [#tail, #head) hold the ring's entries, oldest first (taken ones included). */
  #head = 0;
  #tail = 0;
  /** SYNs that went without a request or hello having taken them (ring full, or older than the idle time). */
  dropped = 0;

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError("capacity must be ≥ 1");
    this.#num = new Float64Array(capacity);
    this.#str = new Array(capacity).fill(undefined);
    this.#ja4t = new Array(capacity).fill("");
    this.#at = new Float64Array(capacity);
  }

  /** SYNs waiting to be taken. */
  get size(): number {
    return this.#index.size;
  }

  /** A SYN: a retransmitted one (or a reused port's) replaces the JA4T in place. */
  add(key: ConnKey, ja4t: string, now: number): void {
    const at = this.#index.get(key);
    if (at !== undefined) {
      this.#ja4t[at] = ja4t;
      return;
    }
    if (this.#head - this.#tail === this.capacity) this.#dropOldest();
    const s = this.#head++ % this.capacity;
    if (typeof key === "number") this.#num[s] = key;
    else this.#str[s] = key;
    this.#ja4t[s] = ja4t;
    this.#at[s] = now;
    this.#index.set(key, s);
  }

  /** The JA4T of `key`'s SYN, which leaves the table; undefined when none waits. */
  take(key: ConnKey): string | undefined {
    const s = this.#index.get(key);
    if (s === undefined) return undefined;
    this.#index.delete(key);
    const j = this.#ja4t[s];
    this.#ja4t[s] = "";
    this.#str[s] = undefined;
    return j;
  }

  /** Forgets `key`'s SYN, if one waits. */
  delete(key: ConnKey): void {
    this.take(key);
  }

  /** Drops SYNs that arrived before `now - idle` (oldest first). */
  expire(now: number, idle: number): void {
    while (this.#tail < this.#head && this.#at[this.#tail % this.capacity] + idle <= now) this.#dropOldest();
  }

  #dropOldest(): void {
    const s = this.#tail++ % this.capacity;
    const key = this.#str[s] ?? this.#num[s];
    // The slot's key may have been taken (its index entry gone) or added again later (another slot).
    if (this.#index.get(key) === s) {
      this.#index.delete(key);
      this.dropped++;
    }
    this.#ja4t[s] = "";
    this.#str[s] = undefined;
  }
}
