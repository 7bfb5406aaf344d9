import { HybridMap } from "./nummap.ts";

/**
 * A bounded map with least-recently-used eviction in O(1): a hash table for lookup (HybridMap: number keys
 * in a NumMap, which allocates nothing per insert or delete) plus an intrusive doubly linked
 * list for recency. Touching an entry relinks two pointers; it never deletes and re-inserts the Map key.
 *
 * Why not Map's insertion order (delete + set on every touch, evict `keys().next()`): V8 leaves a hole per
 * deleted key until the table is rebuilt, and `keys().next()` walks over every hole at the front, so with a
 * full map each eviction cost O(holes) — measured at ~19 % of the agent's CPU with one connection per request.
 *
 * Bounded two ways: an entry count and a byte budget. Owners report an entry's bytes (`resize`), so memory held
 * by per-connection buffers is capped globally, not only per stream.
 */
export interface LruNode<K, V> {
  key: K;
  value: V;
  bytes: number;
  prev: LruNode<K, V> | null;
  next: LruNode<K, V> | null;
}

export class LruMap<K, V> {
  /** Number keys (stream and connection keys) in a table that allocates nothing per insert/delete. */
  #map = new HybridMap<K, LruNode<K, V>>();
  #head: LruNode<K, V> | null = null; // least recently used
  #tail: LruNode<K, V> | null = null; // most recently used
  #bytes = 0;
  /** Entries evicted for the count cap / for the byte budget. */
  evictedCount = 0;
  evictedBytes = 0;

  constructor(
    readonly maxEntries: number,
    readonly maxBytes = Infinity,
    /** Called for every entry evicted by a cap (not for delete()). */
    private readonly onEvict?: (key: K, value: V, reason: "count" | "bytes") => void,
  ) {
    if (!(maxEntries >= 1)) throw new RangeError("maxEntries must be ≥ 1");
  }

  get size(): number {
    return this.#map.size;
  }

  /** Bytes reported by the owners of all entries. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The value, without changing its recency. */
  peek(key: K): V | undefined {
    return this.#map.get(key)?.value;
  }

  has(key: K): boolean {
    return this.#map.has(key);
  }

  /** The value, made most recently used. */
  get(key: K): V | undefined {
    const n = this.#map.get(key);
    if (n === undefined) return undefined;
    this.#toTail(n);
    return n.value;
  }

  /** The node (for resize), made most recently used. */
  node(key: K): LruNode<K, V> | undefined {
    const n = this.#map.get(key);
    if (n !== undefined) this.#toTail(n);
    return n;
  }

  /** Inserts or replaces; the entry becomes most recently used. Evicts past the caps. */
  set(key: K, value: V, bytes = 0): LruNode<K, V> {
    let n = this.#map.get(key);
    if (n !== undefined) {
      n.value = value;
      this.#toTail(n);
      this.resize(n, bytes);
      return n;
    }
    n = { key, value, bytes, prev: this.#tail, next: null };
    if (this.#tail) this.#tail.next = n;
    else this.#head = n;
    this.#tail = n;
    this.#map.set(key, n);
    this.#bytes += bytes;
    this.#enforce(n);
    return n;
  }

  /** Updates an entry's byte count and evicts others (least recent first) past the byte budget. */
  resize(n: LruNode<K, V>, bytes: number): void {
    this.#bytes += bytes - n.bytes;
    n.bytes = bytes;
    this.#enforce(n);
  }

  delete(key: K): boolean {
    return this.take(key) !== undefined;
  }

  /** Deletes the entry and returns its node (undefined: there was none): one lookup where get + delete are two. */
  take(key: K): LruNode<K, V> | undefined {
    const n = this.#map.get(key);
    if (n === undefined) return undefined;
    this.#unlink(n);
    this.#map.delete(key);
    this.#bytes -= n.bytes;
    return n;
  }

  /** The least recently used entry, or undefined. */
  oldest(): LruNode<K, V> | undefined {
    return this.#head ?? undefined;
  }

  /** Entries from least to most recently used (safe against deleting the current entry). */
  *entries(): IterableIterator<[K, V]> {
    for (let n = this.#head; n !== null;) {
      const next = n.next;
      yield [n.key, n.value];
      n = next;
    }
  }

  clear(): void {
    this.#map.clear();
    this.#head = this.#tail = null;
    this.#bytes = 0;
  }

  #enforce(keep: LruNode<K, V>): void {
    while (this.#map.size > this.maxEntries) this.#evictHead("count", keep);
    while (this.#bytes > this.maxBytes && this.#head !== null) {
      if (!this.#evictHead("bytes", keep)) break;
    }
  }

  #evictHead(reason: "count" | "bytes", keep: LruNode<K, V>): boolean {
    let n = this.#head;
    // The entry being written is evicted last: only when it alone exceeds the budget.
    if (n === keep && n.next !== null) n = n.next;
    if (n === null) return false;
    this.#unlink(n);
    this.#map.delete(n.key);
    this.#bytes -= n.bytes;
    if (reason === "count") this.evictedCount++;
    else this.evictedBytes++;
    this.onEvict?.(n.key, n.value, reason);
    return n !== keep;
  }

  #unlink(n: LruNode<K, V>): void {
    if (n.prev) n.prev.next = n.next;
    else this.#head = n.next;
    if (n.next) n.next.prev = n.prev;
    else this.#tail = n.prev;
    n.prev = n.next = null;
  }

  #toTail(n: LruNode<K, V>): void {
    if (this.#tail === n) return;
    this.#unlink(n);
    n.prev = this.#tail;
    if (this.#tail) this.#tail.next = n;
    else this.#head = n;
    this.#tail = n;
  }
}
