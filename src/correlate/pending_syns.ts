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
 * when the ring is full, and SYNs older than the idle time when `expire` is called. The ring starts small and
 * doubles up to `capacity` (an agent that sees few SYNs alone keeps a few KiB, not 65,536 slots).
 */
import type { ConnKey } from "../capture/connkey.ts";
import { HybridMap } from "../capture/nummap.ts";

export class PendingSyns {
  /** key → slot (slot = arrival counter % the ring's size) */
  #index = new HybridMap<ConnKey, number>();
  /** Number keys in #num; other keys (strings: IPv6, endpoints past the index table) in #str. */
  #num: Float64Array;
  #str: (string | undefined)[];
  #ja4t: string[];
  #at: Float64Array;
  /** 1: the slot's SYN waits; 0: taken (or dropped). */
  #live: Uint8Array;
  /**
   * Arrival counters: slots [#tail, #head) hold the ring's entries, oldest first. Taken ones are passed over
   * when they reach the tail, so while SYNs are answered in the order they came the ring holds only those
   * still waiting.
   */
  #head = 0;
  #tail = 0;
  /** SYNs that went without a request or hello having taken them (ring full, or older than the idle time). */
  dropped = 0;

  constructor(readonly capacity: number, initial = 1024) {
    if (!(capacity >= 1)) throw new RangeError("capacity must be ≥ 1");
    const n = Math.min(capacity, Math.max(1, initial));
    this.#num = new Float64Array(n);
    this.#str = new Array(n).fill(undefined);
    this.#ja4t = new Array(n).fill("");
    this.#at = new Float64Array(n);
    this.#live = new Uint8Array(n);
  }

  /** Slots in the ring now (doubles up to capacity as SYNs wait). */
  get slots(): number {
    return this.#at.length;
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
    this.#passTaken();
    const size = this.#at.length;
    if (this.#head - this.#tail === size) {
      if (size < this.capacity) this.#grow(Math.min(this.capacity, size * 2));
      else this.#dropOldest();
    }
    const s = this.#head++ % this.#at.length;
    if (typeof key === "number") this.#num[s] = key;
    else this.#str[s] = key;
    this.#ja4t[s] = ja4t;
    this.#at[s] = now;
    this.#live[s] = 1;
    this.#index.set(key, s);
  }

  /** The JA4T of `key`'s SYN, which leaves the table; undefined when none waits. */
  take(key: ConnKey): string | undefined {
    const s = this.#index.get(key);
    if (s === undefined) return undefined;
    this.#index.delete(key);
    const j = this.#ja4t[s];
    this.#clear(s);
    return j;
  }

  /** Forgets `key`'s SYN, if one waits. */
  delete(key: ConnKey): void {
    this.take(key);
  }

  /** Drops SYNs that arrived before `now - idle` (oldest first). */
  expire(now: number, idle: number): void {
    this.#passTaken();
    while (this.#tail < this.#head && this.#at[this.#tail % this.#at.length] + idle <= now) {
      this.#dropOldest();
      this.#passTaken();
    }
  }

  #clear(s: number): void {
    this.#live[s] = 0;
    this.#ja4t[s] = "";
    this.#str[s] = undefined;
  }

  /** Moves the tail past taken slots. */
  #passTaken(): void {
    const live = this.#live, size = live.length;
    while (this.#tail < this.#head && live[this.#tail % size] === 0) this.#tail++;
  }

  /** Moves the entries [tail, head) to a ring of `size` slots, in order; the index follows the waiting ones. */
  #grow(size: number): void {
    const num = new Float64Array(size), at = new Float64Array(size), live = new Uint8Array(size);
    const str: (string | undefined)[] = new Array(size).fill(undefined);
    const ja4t: string[] = new Array(size).fill("");
    const old = this.#at.length;
    for (let c = this.#tail; c < this.#head; c++) {
      const o = c % old;
      if (this.#live[o] === 0) continue;
      const n = c % size;
      num[n] = this.#num[o];
      str[n] = this.#str[o];
      ja4t[n] = this.#ja4t[o];
      at[n] = this.#at[o];
      live[n] = 1;
      this.#index.set(str[n] ?? num[n], n);
    }
    this.#num = num;
    this.#str = str;
    this.#ja4t = ja4t;
    this.#at = at;
    this.#live = live;
  }

  #dropOldest(): void {
    const s = this.#tail++ % this.#at.length;
    if (this.#live[s] === 0) return;
    this.#index.delete(this.#str[s] ?? this.#num[s]);
    this.dropped++;
    this.#clear(s);
  }
}
