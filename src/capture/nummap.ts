/**
 * A hash map for number keys that allocates nothing per insert or delete: open addressing with linear probing
 * over a Float64Array of keys, deletion by backward shift (no tombstones), grown by doubling past 3/4 full,
 * never shrunk (an LRU map's table is bounded by its entry cap).
 *
 * Why not Map: V8's Map rebuilds its table whenever deleted entries fill it and shrinks it whenever it falls
 * below a quarter full, so a per-connection map that holds a few live entries and churns one insert and one
 * delete per connection allocated a new table every few connections (70–170 bytes per insert/delete pair
 * measured, ~0.5 KB per connection across the trackers), all of it garbage for the collector.
 *
 * `HybridMap` puts number keys here and anything else (a string connection key, NaN) in a Map.
 */
export class NumMap<V> {
  #keys: Float64Array;
  #vals: (V | undefined)[];
  #used: Uint8Array;
  #mask: number;
  #size = 0;

  constructor(capacity = 16) {
    let cap = 8;
    while (cap < capacity) cap *= 2;
    this.#keys = new Float64Array(cap);
    this.#vals = new Array(cap).fill(undefined);
    this.#used = new Uint8Array(cap);
    this.#mask = cap - 1;
  }

  get size(): number {
    return this.#size;
  }

  /** Slots in the table (a power of two, at least 4/3 of the entries). */
  get capacity(): number {
    return this.#mask + 1;
  }

  #slot(k: number): number {
    const keys = this.#keys, used = this.#used, mask = this.#mask;
    let i = hash(k) & mask;
    while (used[i] !== 0) {
      if (keys[i] === k) return i;
      i = (i + 1) & mask;
    }
    return ~i; // not found: where it would go
  }

  get(k: number): V | undefined {
    const i = this.#slot(k);
    return i >= 0 ? this.#vals[i] : undefined;
  }

  has(k: number): boolean {
    return this.#slot(k) >= 0;
  }

  set(k: number, v: V): this {
    let i = this.#slot(k);
    if (i >= 0) {
      this.#vals[i] = v;
      return this;
    }
    // Grown past 3/4 full: an LRU map at its cap (one entry over, then one evicted) stays in its table.
    if ((this.#size + 1) * 4 > (this.#mask + 1) * 3) {
      this.#grow();
      i = this.#slot(k);
    }
    i = ~i;
    this.#keys[i] = k;
    this.#vals[i] = v;
    this.#used[i] = 1;
    this.#size++;
    return this;
  }

  delete(k: number): boolean {
    let i = this.#slot(k);
    if (i < 0) return false;
    const keys = this.#keys, vals = this.#vals, used = this.#used, mask = this.#mask;
    // Backward shift: move later entries of the probe run into the hole when their home slot allows it.
    for (let j = (i + 1) & mask; used[j] !== 0; j = (j + 1) & mask) {
      const home = hash(keys[j]) & mask;
      // j's entry may move to i unless its home lies cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        keys[i] = keys[j];
        vals[i] = vals[j];
        i = j;
      }
    }
    used[i] = 0;
    vals[i] = undefined;
    this.#size--;
    return true;
  }

  clear(): void {
    this.#used.fill(0);
    this.#vals.fill(undefined);
    this.#size = 0;
  }

  #grow(): void {
    const keys = this.#keys, vals = this.#vals, used = this.#used;
    const cap = (this.#mask + 1) * 2;
    this.#keys = new Float64Array(cap);
    this.#vals = new Array(cap).fill(undefined);
    this.#used = new Uint8Array(cap);
    this.#mask = cap - 1;
    this.#size = 0;
    for (let i = 0; i < used.length; i++) if (used[i] !== 0) this.set(keys[i], vals[i] as V);
  }
}

/** Mixes a double's integer part (exact up to 2^53) into 32 bits (exported for tests). */
export function hash(k: number): number {
  const lo = k >>> 0, hi = (k / 4294967296) | 0;
  let h = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** Keys a NumMap holds: numbers but NaN (a Map finds NaN by SameValueZero; NaN !== NaN in a Float64Array). */
function isNumKey(k: unknown): k is number {
  return typeof k === "number" && k === k;
}

/** Number keys in a NumMap, other keys (strings, NaN) in a Map. */
export class HybridMap<K, V> {
  #num = new NumMap<V>();
  #other = new Map<K, V>();

  get size(): number {
    return this.#num.size + this.#other.size;
  }

  get(k: K): V | undefined {
    return isNumKey(k) ? this.#num.get(k) : this.#other.get(k);
  }

  has(k: K): boolean {
    return isNumKey(k) ? this.#num.has(k) : this.#other.has(k);
  }

  set(k: K, v: V): this {
    if (isNumKey(k)) this.#num.set(k, v);
    else this.#other.set(k, v);
    return this;
  }

  delete(k: K): boolean {
    return isNumKey(k) ? this.#num.delete(k) : this.#other.delete(k);
  }

  clear(): void {
    this.#num.clear();
    this.#other.clear();
  }
}
