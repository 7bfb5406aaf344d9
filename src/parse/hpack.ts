/**
 * HPACK (RFC 7541) header block decoder: static + per-connection dynamic table, integer and string
 * literals, Huffman. One `HpackDecoder` per HTTP/2 connection direction.
 *
 * Errors are returned, never thrown. Any error leaves the dynamic table out of sync with the peer's
 * encoder, so the decoder marks itself `broken` and refuses every later block: the caller must drop
 * the connection's state.
 */
import { HUFFMAN_CODES, HUFFMAN_EOS, HUFFMAN_LENGTHS } from "./huffman.ts";
import { fail, ok, type Parsed } from "./errors.ts";

/** One decoded header field, in wire order: [name, value]. */
export type HeaderField = [name: string, value: string];

/** RFC 7541 Appendix A. Index 1..61. */
export const STATIC_TABLE: readonly HeaderField[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

export interface HpackLimits {
  /**
   * Ceiling for dynamic table size updates (the decoding side's SETTINGS_HEADER_TABLE_SIZE). A passive
   * observer rarely sees the server's value, so the default is lenient: 64 KiB.
   */
  maxTableSize?: number;
  /**
   * Table size limit in effect before any size update: the SETTINGS_HEADER_TABLE_SIZE the decoding
   * side advertised (RFC 7541 4.2). Default 4096.
   */
  initialTableSize?: number;
  /** Cap on the decoded list, counted as RFC 7540 does (name + value + 32 per field). Default 64 KiB. */
  maxHeaderListSize?: number;
}

export const DEFAULT_HPACK_TABLE_SIZE = 4096;
export const DEFAULT_MAX_TABLE_SIZE = 65536;
export const DEFAULT_MAX_HEADER_LIST_SIZE = 65536;

interface Entry {
  /**
   * The entry as a decoded field [name, value], made once: every indexed reference to it yields this same
   * (never mutated) pair, so a consumer compares a request's fields with the last one's by identity, and
   * nothing is allocated.
   */
  field: HeaderField;
  /** RFC 7541 4.1 entry size: name octets + value octets + 32. */
  size: number;
  nameOctets: number;
}

/** The static table as entries (its strings are ASCII: octets = length). */
const STATIC_ENTRIES: Entry[] = STATIC_TABLE.map(([name, value]) => ({
  size: name.length + value.length + 32,
  nameOctets: name.length,
  field: [name, value],
}));

// Huffman decode tree: node n has children tree[2n] (bit 0) and tree[2n+1] (bit 1); a child value
// >= 0 is a node index, < 0 is a leaf holding ~symbol. Built once from the RFC table.
const HUFF_TREE: Int32Array = (() => {
  const tree = new Int32Array(2 * 600).fill(0);
  let nodes = 1;
  for (let sym = 0; sym <= HUFFMAN_EOS; sym++) {
    const code = HUFFMAN_CODES[sym], len = HUFFMAN_LENGTHS[sym];
    let node = 0;
    for (let i = len - 1; i >= 0; i--) {
      const bit = Math.floor(code / 2 ** i) & 1; // codes are up to 30 bits: stay out of sign trouble
      const slot = 2 * node + bit;
      if (i === 0) tree[slot] = ~sym;
      else {
        if (tree[slot] === 0) tree[slot] = nodes++;
        node = tree[slot];
      }
    }
  }
  return tree;
})();

const utf8 = new TextDecoder("utf-8");

/**
 * The tree as a nibble machine (as nghttp2 decodes): from node n, the four bits of v lead to
 * NIB_NEXT[16n + v] having emitted NIB_SYM[16n + v] (-1: none; no code is shorter than 5 bits, so at most
 * one per nibble; -2: EOS, an error). Two lookups per input byte instead of eight tree steps.
 */
const NIB_NEXT = new Int16Array(256 * 16);
const NIB_SYM = new Int16Array(256 * 16);
/** Nodes on the all-ones path at depth ≤ 7: where a string may end (its padding is a prefix of EOS). */
const NODE_ACCEPTS = new Uint8Array(256);
(() => {
  for (let n = 0; n < 256; n++) {
    for (let v = 0; v < 16; v++) {
      let cur = n, sym = -1;
      for (let b = 3; b >= 0; b--) {
        const next = HUFF_TREE[2 * cur + ((v >> b) & 1)];
        if (next < 0) {
          sym = ~next === HUFFMAN_EOS ? -2 : ~next;
          cur = 0;
          if (sym === -2) break;
        } else cur = next;
      }
      NIB_NEXT[16 * n + v] = cur;
      NIB_SYM[16 * n + v] = sym;
    }
  }
  // Root, then the nodes reached by 1 … 7 one-bits.
  for (let n = 0, d = 0; d <= 7 && n >= 0; d++) {
    NODE_ACCEPTS[n] = 1;
    n = HUFF_TREE[2 * n + 1];
  }
})();

/**
 * Decodes a Huffman-coded string (RFC 7541 5.2) into `out` (at least 8/5 of src's length: no code is
 * shorter than 5 bits); returns the decoded length, or -1 on EOS, over-long or non-EOS padding.
 */
export function huffmanDecodeInto(src: Uint8Array, out: Uint8Array): number {
  let n = 0, node = 0;
  for (let i = 0; i < src.length; i++) {
    const byte = src[i];
    let k = 16 * node + (byte >> 4);
    let sym = NIB_SYM[k];
    if (sym >= 0) out[n++] = sym;
    else if (sym === -2) return -1;
    k = 16 * NIB_NEXT[k] + (byte & 15);
    sym = NIB_SYM[k];
    if (sym >= 0) out[n++] = sym;
    else if (sym === -2) return -1;
    node = NIB_NEXT[k];
  }
  return NODE_ACCEPTS[node] === 1 ? n : -1;
}

/** Decodes a Huffman-coded string (RFC 7541 5.2). Returns null on EOS, over-long or non-EOS padding. */
export function huffmanDecode(src: Uint8Array): Uint8Array | null {
  const out = new Uint8Array(Math.ceil((src.length * 8) / 5));
  const n = huffmanDecodeInto(src, out);
  return n < 0 ? null : out.subarray(0, n);
}

/** Where readString decodes Huffman strings (a typed array costs ~1 µs to allocate; grown when needed). */
let huffScratch = new Uint8Array(4096);

/** Huffman-encodes bytes (used by the encoder below and by tests). */
export function huffmanEncode(src: Uint8Array): Uint8Array {
  const out: number[] = [];
  let acc = 0, accBits = 0;
  for (const byte of src) {
    const code = HUFFMAN_CODES[byte], len = HUFFMAN_LENGTHS[byte];
    for (let i = len - 1; i >= 0; i--) {
      acc = (acc << 1) | (Math.floor(code / 2 ** i) & 1);
      if (++accBits === 8) {
        out.push(acc);
        acc = 0;
        accBits = 0;
      }
    }
  }
  if (accBits > 0) out.push(((acc << (8 - accBits)) | (0xff >> accBits)) & 0xff);
  return Uint8Array.from(out);
}

/** Result of reading an HPACK integer: value and the offset after it, or null when invalid/truncated. */
/** Where the integer readInt read ended (one module-wide slot instead of a result array per integer). */
let intEnd = 0;

/** An HPACK integer (RFC 7541 5.1) at `pos`, -1 when malformed or truncated; its end in `intEnd`. */
function readInt(buf: Uint8Array, pos: number, prefixBits: number): number {
  if (pos >= buf.length) return -1;
  const max = (1 << prefixBits) - 1;
  let v = buf[pos++] & max;
  if (v < max) {
    intEnd = pos;
    return v;
  }
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) return -1;
    // Nothing legitimate needs more than 2^28 (five continuation bytes, zero padding included). Capping the
    // shift matters as much as the value: runs of 0x80 add nothing but once 2 ** shift reaches Infinity the
    // value turns NaN, which slips past the comparison below.
    if (shift > 28) return -1;
    const b = buf[pos++];
    v += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (v > 0x0fffffff) return -1;
    if ((b & 0x80) === 0) {
      intEnd = pos;
      return v;
    }
  }
}

export class HpackDecoder {
  readonly maxTableSize: number;
  readonly maxHeaderListSize: number;
  /** Current table size limit, as last set by a dynamic table size update (starts at 4096). */
  private limit: number;
  /** Dynamic table, oldest first; `start` skips evicted entries until compaction. */
  private entries: Entry[] = [];
  private start = 0;
  private used = 0;
  private brokenReason: string | undefined;

  constructor(limits: HpackLimits = {}) {
    this.maxTableSize = limits.maxTableSize ?? DEFAULT_MAX_TABLE_SIZE;
    this.maxHeaderListSize = limits.maxHeaderListSize ?? DEFAULT_MAX_HEADER_LIST_SIZE;
    this.limit = Math.min(limits.initialTableSize ?? DEFAULT_HPACK_TABLE_SIZE, this.maxTableSize);
  }

  /** True after any error: the table no longer matches the peer's, so every later block fails. */
  get broken(): boolean {
    return this.brokenReason !== undefined;
  }

  /** Current dynamic table size in octets (RFC 7541 4.1). */
  get tableSize(): number {
    return this.used;
  }

  /** Current dynamic table size limit. */
  get tableLimit(): number {
    return this.limit;
  }

  /** The dynamic table, newest first (index 62 first), for inspection and tests. */
  dynamicTable(): HeaderField[] {
    const out: HeaderField[] = [];
    for (let i = this.entries.length - 1; i >= this.start; i--) {
      out.push([...this.entries[i].field]);
    }
    return out;
  }

  /** Decodes one complete header block (HEADERS + CONTINUATION payloads joined). */
  decode(block: Uint8Array): Parsed<HeaderField[]> {
    if (this.brokenReason !== undefined) {
      return fail("malformed", `hpack state dropped after earlier error: ${this.brokenReason}`);
    }
    const r = this.decodeInner(block);
    if (!r.ok) this.brokenReason = r.error.message;
    return r;
  }

  private decodeInner(buf: Uint8Array): Parsed<HeaderField[]> {
    const out: HeaderField[] = [];
    let listSize = 0;
    let pos = 0;
    let sawField = false;
    while (pos < buf.length) {
      const b = buf[pos];
      const at = pos;
      if (b & 0x80) {
        // 6.1 Indexed header field.
        const index = readInt(buf, pos, 7);
        if (index < 0) return fail("malformed", "bad integer in indexed field", at);
        pos = intEnd;
        const e = this.entry(index);
        if (!e) return fail("malformed", `index ${index} out of range`, at);
        out.push(e.field);
        listSize += e.size;
        sawField = true;
      } else if ((b & 0xe0) === 0x20) {
        // 6.3 Dynamic table size update: only before the first field of a block.
        const size = readInt(buf, pos, 5);
        if (size < 0) return fail("malformed", "bad integer in table size update", at);
        pos = intEnd;
        if (sawField) return fail("malformed", "table size update after a header field", at);
        if (size > this.maxTableSize) {
          return fail("oversize", `table size update ${size} > ${this.maxTableSize}`, at);
        }
        this.limit = size;
        this.evict(0);
      } else {
        // 6.2 Literal: with incremental indexing (01xxxxxx, 6-bit index), without indexing (0000xxxx)
        // or never indexed (0001xxxx), both with a 4-bit index.
        const incremental = (b & 0xc0) === 0x40;
        const index = readInt(buf, pos, incremental ? 6 : 4);
        if (index < 0) return fail("malformed", "bad integer in literal field", at);
        pos = intEnd;
        let name: string, nameLen: number;
        if (index === 0) {
          const s = this.readString(buf, pos);
          if (s === undefined) return this.stringError;
          name = s;
          nameLen = this.strOctets;
          pos = this.strEnd;
        } else {
          const e = this.entry(index);
          if (!e) return fail("malformed", `name index ${index} out of range`, at);
          name = e.field[0];
          nameLen = e.nameOctets;
        }
        const value = this.readString(buf, pos);
        if (value === undefined) return this.stringError;
        pos = this.strEnd;
        const field: HeaderField = [name, value];
        out.push(field);
        const size = nameLen + this.strOctets + 32;
        listSize += size;
        if (incremental) this.insert({ field, size, nameOctets: nameLen });
        sawField = true;
      }
      if (listSize > this.maxHeaderListSize) {
        return fail("oversize", `header list over ${this.maxHeaderListSize} octets`, at);
      }
    }
    return ok(out);
  }

  /** The entry at a 1-based index (static table, then dynamic), or null. */
  private entry(index: number): Entry | null {
    if (index === 0) return null;
    if (index <= STATIC_ENTRIES.length) return STATIC_ENTRIES[index - 1];
    const i = this.entries.length - 1 - (index - STATIC_ENTRIES.length - 1);
    return i < this.start ? null : this.entries[i];
  }

  /** readString's results besides the string: its octets, where it ended, or why it failed. */
  private strOctets = 0;
  private strEnd = 0;
  private stringError: Parsed<never> = fail("malformed", "");

  /** A string literal at `pos` (5.2); undefined on error (in `stringError`). */
  private readString(buf: Uint8Array, pos: number): string | undefined {
    if (pos >= buf.length) return this.strFail(fail("malformed", "string literal missing", pos));
    const huff = (buf[pos] & 0x80) !== 0;
    const len = readInt(buf, pos, 7);
    if (len < 0) return this.strFail(fail("malformed", "bad string length", pos));
    const start = intEnd;
    if (start + len > buf.length) {
      return this.strFail(fail("malformed", "string literal past end of block", pos));
    }
    // A single string can't exceed the list cap: refuse before Huffman-decoding it.
    if (len > this.maxHeaderListSize) {
      return this.strFail(fail("oversize", "string literal over header list cap", pos));
    }
    let raw = buf.subarray(start, start + len);
    if (huff) {
      const need = Math.ceil((len * 8) / 5);
      if (huffScratch.length < need) huffScratch = new Uint8Array(Math.max(need, 2 * huffScratch.length));
      const n = huffmanDecodeInto(raw, huffScratch);
      if (n < 0) return this.strFail(fail("malformed", "invalid Huffman string", pos));
      raw = huffScratch.subarray(0, n);
    }
    this.strOctets = raw.length;
    this.strEnd = start + len;
    return utf8.decode(raw);
  }

  private strFail(e: Parsed<never>): undefined {
    this.stringError = e;
    return undefined;
  }

  private insert(e: Entry): void {
    // 4.4: an entry larger than the table empties it and is not added.
    this.evict(e.size);
    if (e.size <= this.limit) {
      this.entries.push(e);
      this.used += e.size;
    }
  }

  /** Evicts oldest entries until `room` more octets fit under the limit. */
  private evict(room: number): void {
    while (this.used + room > this.limit && this.start < this.entries.length) {
      this.used -= this.entries[this.start++].size;
    }
    if (this.start > 64 && this.start * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.start);
      this.start = 0;
    }
  }
}
