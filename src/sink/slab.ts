/**
 * Where a sink's memos keep the bytes of repeating values: views of one buffer. A typed array of its own
 * costs ~1 µs to allocate under Deno (every one gets a backing store), a view ~40 ns, and a busy server sees
 * new values all the time (client addresses, a user's cookie hash, a new User-Agent). When the buffer is full
 * the owner's memos start over (`onReset`: they hold views of bytes about to be reused) — values that repeat
 * come back at once.
 */
export class Slab {
  readonly #bytes: Uint8Array;
  #pos = 0;

  constructor(size: number, private readonly onReset: () => void) {
    this.#bytes = new Uint8Array(size);
  }

  /** `n` bytes, as a view (their old contents); undefined past a quarter of the slab (not worth keeping). */
  reserve(n: number): Uint8Array | undefined {
    const size = this.#bytes.length;
    if (n > size / 4) return undefined;
    if (this.#pos + n > size) {
      this.onReset();
      this.#pos = 0;
    }
    const at = this.#pos;
    this.#pos += n;
    return this.#bytes.subarray(at, at + n);
  }

  /** A copy of `b` in the slab, or undefined when it is not kept. */
  keep(b: Uint8Array): Uint8Array | undefined {
    const v = this.reserve(b.length);
    if (v === undefined) return undefined;
    // A short loop costs less than a call into the native copy.
    if (b.length > 16) v.set(b);
    else for (let i = 0; i < b.length; i++) v[i] = b[i];
    return v;
  }
}
