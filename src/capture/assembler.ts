/**
 * Puts a connection's bytes back in order by their position in the stream.
 *
 * BPF copies a large read in several chunk events, each carrying its byte position on the connection
 * (running count of bytes read on the socket). Chunks of one read arrive in order, but reads from two
 * CPUs may interleave in the ring; a chunk lost to a full ring leaves a gap. The assembler releases bytes
 * only when contiguous, holds a bounded amount out of order, and skips a gap when it stays unfilled
 * (counted, so the parser above can resynchronise).
 */
export interface AssemblerStats {
  /** Bytes delivered in order. */
  delivered: number;
  /** Bytes skipped over because a gap never filled (lost chunks). */
  skipped: number;
  /** Gaps skipped. */
  gaps: number;
  /** Duplicate or overlapping bytes ignored. */
  duplicate: number;
}

export class StreamAssembler {
  /** Position of the next byte to deliver; undefined until the first chunk fixes it. */
  next: number | undefined;
  // Both maps are shared empties until first needed: most streams never hold anything out of order.
  private pending: Map<number, Uint8Array> = NONE_PENDING;
  /** Known holes ahead of `next` (from → to), skipped silently when reached. */
  private lost: Map<number, number> = NONE_LOST;
  private pendingBytes = 0;
  // Counters as fields, not a stats object: one object less per connection (stats builds one on demand).
  private delivered = 0;
  private skipped = 0;
  private gaps = 0;
  private duplicate = 0;

  get stats(): AssemblerStats {
    return { delivered: this.delivered, skipped: this.skipped, gaps: this.gaps, duplicate: this.duplicate };
  }

  /** `start`: where the stream begins, when known (else the first chunk's position fixes it). */
  constructor(private readonly maxPending = 64 * 1024, start?: number) {
    this.next = start;
  }

  /**
   * The common case without an allocation: `len` bytes at `pos` are exactly the next ones and nothing is held
   * out of order. Accounts them and returns true (the caller delivers them itself); false means use push().
   */
  takeInOrder(pos: number, len: number): boolean {
    if (this.next === undefined) this.next = pos;
    if (pos !== this.next || this.pendingBytes !== 0 || this.pending.size !== 0 || this.lost.size !== 0) {
      return false;
    }
    this.next += len;
    this.delivered += len;
    return true;
  }

  /**
   * Adds the bytes at `pos`; returns the bytes that became contiguous (possibly several pieces),
   * and whether a gap was skipped before them (the consumer should resynchronise).
   */
  push(pos: number, bytes: Uint8Array): { out: Uint8Array[]; gap: boolean } {
    const out: Uint8Array[] = [];
    let gap = false;
    if (this.next === undefined) this.next = pos;
    if (pos + bytes.length <= this.next) {
      this.duplicate += bytes.length;
      return { out, gap };
    }
    if (pos < this.next) {
      this.duplicate += this.next - pos;
      bytes = bytes.subarray(this.next - pos);
      pos = this.next;
    }
    if (pos === this.next) {
      out.push(bytes);
      this.next += bytes.length;
      this.delivered += bytes.length;
      this.drain(out);
      return { out, gap };
    }
    // Ahead of the next expected byte: keep it, unless that would exceed the bound.
    const held = this.pending.get(pos);
    if (!held || held.length < bytes.length) {
      if (held) this.pendingBytes -= held.length;
      if (this.pending === NONE_PENDING) this.pending = new Map();
      // A view of the caller's record: copy (the reader reuses its buffer after the call).
      this.pending.set(pos, bytes.slice());
      this.pendingBytes += bytes.length;
    }
    if (this.pendingBytes > this.maxPending) {
      gap = this.skipGap(out);
    }
    return { out, gap };
  }

  /** Gives up on the current gap: jumps to the earliest held chunk. Returns true if it skipped. */
  skipGap(out: Uint8Array[] = []): boolean {
    if (this.pending.size === 0 || this.next === undefined) return false;
    const first = Math.min(...this.pending.keys());
    this.gaps++;
    this.skipped += first - this.next;
    this.next = first;
    this.drain(out);
    return true;
  }

  /**
   * Bytes [from, to) were read by the server but not copied (capture limit). Returns true when they
   * sit right at the next expected position, i.e. the stream being parsed has a hole now.
   */
  markLost(from: number, to: number): boolean {
    if (this.next === undefined) this.next = from;
    if (to <= this.next) return false;
    if (from <= this.next) {
      this.gaps++;
      this.skipped += to - this.next;
      this.next = to;
      return true;
    }
    if (this.lost === NONE_LOST) this.lost = new Map();
    this.lost.set(from, to);
    return false;
  }

  /** Bytes held out of order. */
  get held(): number {
    return this.pendingBytes;
  }

  private drain(out: Uint8Array[]): void {
    for (;;) {
      let progressed = false;
      for (const [from, to] of this.lost) {
        if (from > this.next!) continue;
        this.lost.delete(from);
        if (to > this.next!) {
          this.gaps++;
          this.skipped += to - this.next!;
          this.next = to;
        }
        progressed = true;
      }
      for (const [p, b] of this.pending) {
        if (p > this.next!) continue;
        this.pending.delete(p);
        this.pendingBytes -= b.length;
        if (p + b.length > this.next!) {
          const piece = b.subarray(this.next! - p);
          this.duplicate += b.length - piece.length;
          out.push(piece);
          this.next! += piece.length;
          this.delivered += piece.length;
        } else {
          this.duplicate += b.length;
        }
        progressed = true;
      }
      if (!progressed) return;
    }
  }
}

/** Never written: replaced by a stream's own map on first use. */
const NONE_PENDING: Map<number, Uint8Array> = new Map();
const NONE_LOST: Map<number, number> = new Map();
