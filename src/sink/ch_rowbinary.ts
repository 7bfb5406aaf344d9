/**
 * The sink's rows as ClickHouse RowBinary, written straight into the caller's batch buffer: no per-row object,
 * string or UTF-8 copy. Values that repeat from row to row (addresses, Host, User-Agent, fingerprints) are kept
 * as their length-prefixed UTF-8 bytes; the rest is written byte by byte when it is ASCII.
 *
 * The column types are those of ch_schema.ts `columns(gen)`, in that order (the insert names them):
 *  - String, LowCardinality(String): LEB128 length + UTF-8 bytes (LowCardinality is transparent in RowBinary)
 *  - UInt8/UInt16/UInt32: little-endian
 *  - Date: UInt16 days since 1970-01-01; DateTime('UTC'): UInt32 seconds
 *  - DateTime64(3, 'UTC'): Int64 milliseconds
 *  - IPv6: 16 bytes, network order (IPv4 clients as ::ffff:a.b.c.d)
 * The batch id (String) closes every row; the caller passes its bytes once per batch.
 */
import { columns, type Generation } from "./ch_schema.ts";
import { emptyRow, type Row, userJa4h } from "./row.ts";
import { formatIPv6 } from "../parse/addr.ts";
import { parseV4, parseV6 } from "../capture/connkey.ts";
import { Slab } from "./slab.ts";

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** Encoded values kept at most; the cache starts over when full (values that repeat come back at once). */
const CACHE_ENTRIES = 8192;
/** Longer values are not kept (a User-Agent is ~100–300 bytes). */
const CACHE_MAX_CHARS = 512;
/**
 * Room a row may need beyond 3 bytes per UTF-16 unit of its strings: time columns, numbers, two IPv6 and 18
 * length prefixes of at most 5 bytes.
 */
const ROW_FIXED = 256;
/** Columns written through the cache (#cached's `k`). */
const CACHED_COLUMNS = 14;
/** "" as a RowBinary String. */
const EMPTY = new Uint8Array(1);

/** `INSERT INTO t (<this>) FORMAT RowBinary`: the columns the encoder writes, in its order. */
export function columnList(gen: Generation): string {
  return columns(gen).map(([n]) => n).join(", ");
}

/** The batch id as a RowBinary String (length + ASCII), written at the end of every row of the batch. */
export function stringBytes(s: string): Uint8Array {
  const e = utf8.encode(s);
  const out = new Uint8Array(varintLength(e.length) + e.length);
  out.set(e, varint(out, 0, e.length));
  return out;
}

function varintLength(n: number): number {
  let k = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    k++;
  }
  return k;
}

function varint(b: Uint8Array, p: number, n: number): number {
  while (n >= 0x80) {
    b[p++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  b[p++] = n;
  return p;
}

function put(b: Uint8Array, p: number, e: Uint8Array): number {
  const n = e.length;
  // A call into the native copy costs more than a short loop.
  if (n > 16) b.set(e, p);
  else for (let i = 0; i < n; i++) b[p + i] = e[i];
  return p + n;
}

/** A string not worth caching: ASCII byte by byte, anything else through TextEncoder. */
function str(b: Uint8Array, p: number, s: string): number {
  const n = s.length;
  if (n === 0) {
    b[p] = 0;
    return p + 1;
  }
  const q = varint(b, p, n);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      const e = utf8.encode(s);
      return put(b, varint(b, p, e.length), e);
    }
    b[q + i] = c;
  }
  return q + n;
}

function u16(b: Uint8Array, p: number, v: number): number {
  b[p] = v;
  b[p + 1] = v >>> 8;
  return p + 2;
}

function u32(b: Uint8Array, p: number, v: number): number {
  b[p] = v;
  b[p + 1] = v >>> 8;
  b[p + 2] = v >>> 16;
  b[p + 3] = v >>> 24;
  return p + 4;
}

const dig = (s: string, i: number) => s.charCodeAt(i) - 48;

/** Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  return era * 146097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719468;
}

/**
 * A row's time in milliseconds since the epoch: "YYYY-MM-DDThh:mm:ss.mmmZ" (what the agent writes) read
 * digit by digit, anything else through Date.parse; unparsable or before 1970 → 0 (as encodeRow).
 */
export function tsMillis(s: string): number {
  if (
    s.length === 24 && s.charCodeAt(10) === 84 && s.charCodeAt(23) === 90 && s.charCodeAt(4) === 45 &&
    s.charCodeAt(7) === 45 && s.charCodeAt(13) === 58 && s.charCodeAt(16) === 58 && s.charCodeAt(19) === 46
  ) {
    const y = dig(s, 0) * 1000 + dig(s, 1) * 100 + dig(s, 2) * 10 + dig(s, 3);
    const mo = dig(s, 5) * 10 + dig(s, 6);
    const d = dig(s, 8) * 10 + dig(s, 9);
    const h = dig(s, 11) * 10 + dig(s, 12);
    const mi = dig(s, 14) * 10 + dig(s, 15);
    const se = dig(s, 17) * 10 + dig(s, 18);
    const ms = dig(s, 20) * 100 + dig(s, 21) * 10 + dig(s, 22);
    if (
      y >= 1970 && y <= 9999 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h >= 0 && h <= 23 && mi >= 0 &&
      mi <= 59 && se >= 0 && se <= 59 && ms >= 0 && ms <= 999
    ) {
      return ((daysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + se * 1000 + ms;
    }
  }
  const t = Date.parse(s);
  return t >= 0 ? t : 0;
}

/** IPv6 text (or IPv4, mapped) → 16 bytes; "" and unparsable text → :: (the column default). */
export function ipv6Bytes(s: string): Uint8Array {
  const out = new Uint8Array(16);
  ipv6Into(s, out);
  return out;
}

/** ipv6Bytes written into `out` (16 bytes, all of them written). */
function ipv6Into(s: string, out: Uint8Array): void {
  for (let i = 0; i < 16; i++) out[i] = 0;
  if (s === "") return;
  if (!s.includes(":")) {
    // Dotted IPv4, read without a regex (a new client address per connection on a busy server); a form the
    // agent does not write (leading zeros) through the regex.
    let v = parseV4(s);
    if (v < 0) {
      const q = quad(s);
      if (!q) return;
      v = ((q[0] << 24) | (q[1] << 16) | (q[2] << 8) | q[3]) >>> 0;
    }
    out[10] = out[11] = 0xff;
    out[12] = v >>> 24;
    out[13] = (v >>> 16) & 0xff;
    out[14] = (v >>> 8) & 0xff;
    out[15] = v & 0xff;
    return;
  }
  if (!parseV6(s, V6)) return;
  for (let i = 0; i < 8; i++) {
    out[2 * i] = V6[i] >> 8;
    out[2 * i + 1] = V6[i] & 0xff;
  }
}

/** parseV6's groups, per call. */
const V6: number[] = new Array<number>(8).fill(0);

/** Dotted IPv4 → its 4 bytes, or undefined. */
function quad(t: string): number[] | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(t);
  if (!m) return undefined;
  const q = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
  return q.every((n) => n <= 255) ? q : undefined;
}

/** 16 bytes → the row's address text: "" for ::, a.b.c.d for ::ffff:a.b.c.d, else RFC 5952 IPv6. */
export function ipv6Text(b: Uint8Array): string {
  for (let i = 0; i < 16; i++) if (b[i] !== 0) return formatIPv6(b, 0, "v4");
  return "";
}

/** Writes rows as RowBinary; holds the caches of repeating values, so one encoder serves every batch. */
export class RowBinaryEncoder {
  #strs = new Map<string, Uint8Array>();
  #ips = new Map<string, Uint8Array>();
  /**
   * Per cached column, the last value and its bytes: rows of one connection or one client repeat them, and
   * comparing with the last one (the same string object, mostly) is cheaper than a hash lookup.
   */
  #lastS: string[] = new Array<string>(CACHED_COLUMNS).fill("");
  #lastB: Uint8Array[] = new Array<Uint8Array>(CACHED_COLUMNS).fill(EMPTY);
  /** The cached values' bytes (src/sink/slab.ts). */
  #slab: Slab;

  /** `slabBytes`: room for the caches' bytes (tests make it small to see them start over). */
  constructor(slabBytes = 1024 * 1024) {
    this.#slab = new Slab(slabBytes, () => {
      this.#strs.clear();
      this.#ips.clear();
      this.#lastS.fill("");
      this.#lastB.fill(EMPTY);
    });
  }

  /** The most bytes `write` may take for this row (check room once per row, no check per value). */
  maxBytes(r: Row, id: Uint8Array): number {
    return ROW_FIXED + id.length +
      3 * (r.host.length + r.server.length + r.capture.length + r.src.length + r.dst.length +
          r.method.length + r.path.length + r.http_version.length + r.host_header.length +
          r.user_agent.length + r.ja4h.length + r.ja4h_r.length + r.ja4h_o.length + r.ja4h_ro.length +
          r.ja4.length + r.ja4_r.length + r.ja4t.length + r.tls_server_name.length);
  }

  /**
   * One row for the generation's columns at `p` in `b` (room for maxBytes assumed), `id` = the batch id's
   * stringBytes; returns the position after it.
   */
  write(r: Row, gen: Generation, b: Uint8Array, p: number, id: Uint8Array): number {
    const ms = tsMillis(r.ts);
    const modern = gen === "modern";
    if (modern) {
      p = u32(b, p, ms >>> 0);
      p = u32(b, p, Math.floor(ms / 4294967296));
    } else {
      const secs = Math.floor(ms / 1000);
      p = u16(b, p, Math.floor(secs / 86400));
      p = u32(b, p, secs);
      p = u16(b, p, ms - secs * 1000);
    }
    p = this.#cached(b, p, r.host, 0);
    p = this.#cached(b, p, r.server, 1);
    p = u32(b, p, r.pid);
    p = this.#cached(b, p, r.capture, 2);
    p = modern ? this.#ip(b, p, r.src) : this.#cached(b, p, r.src, 3);
    p = u16(b, p, r.src_port);
    p = modern ? this.#ip(b, p, r.dst) : this.#cached(b, p, r.dst, 4);
    p = u16(b, p, r.dst_port);
    p = this.#cached(b, p, r.method, 5);
    p = str(b, p, r.path);
    p = this.#cached(b, p, r.http_version, 6);
    p = this.#cached(b, p, r.host_header, 7);
    p = this.#cached(b, p, r.user_agent, 8);
    p = userJa4h(r.ja4h) ? str(b, p, r.ja4h) : this.#cached(b, p, r.ja4h, 9);
    p = str(b, p, r.ja4h_r);
    p = str(b, p, r.ja4h_o);
    p = str(b, p, r.ja4h_ro);
    p = this.#cached(b, p, r.ja4, 10);
    p = this.#cached(b, p, r.ja4_r, 11);
    p = this.#cached(b, p, r.ja4t, 12);
    p = this.#cached(b, p, r.tls_server_name, 13);
    b[p++] = r.truncated ? 1 : 0;
    return put(b, p, id);
  }

  /** A repeating value (column `k` of the last-value memo): its bytes from the cache. */
  #cached(b: Uint8Array, p: number, s: string, k: number): number {
    if (s === this.#lastS[k]) return put(b, p, this.#lastB[k]);
    if (s.length > CACHE_MAX_CHARS) return str(b, p, s);
    let e = this.#strs.get(s);
    if (e === undefined) {
      if (this.#strs.size >= CACHE_ENTRIES) this.#strs.clear();
      // Written into the batch, then kept: a copy in the slab.
      const end = str(b, p, s);
      const kept = this.#slab.keep(b.subarray(p, end));
      if (kept === undefined) return end;
      this.#strs.set(s, kept);
      e = kept;
    }
    this.#lastS[k] = s;
    this.#lastB[k] = e;
    return put(b, p, e);
  }

  #ip(b: Uint8Array, p: number, s: string): number {
    let e = this.#ips.get(s);
    if (e === undefined) {
      if (this.#ips.size >= CACHE_ENTRIES) this.#ips.clear();
      const kept = this.#slab.reserve(16);
      if (kept === undefined) e = ipv6Bytes(s);
      else {
        ipv6Into(s, kept);
        e = kept;
      }
      this.#ips.set(s, e);
    }
    for (let i = 0; i < 16; i++) b[p + i] = e[i];
    return p + 16;
  }
}

/** A batch read back: its rows and each row's batch id (spool read-back, conversion to JSONEachRow, tests). */
export interface DecodedBatch {
  rows: Row[];
  ids: string[];
}

/** The inverse of RowBinaryEncoder.write over a whole body; throws on a truncated or malformed body. */
export function decodeRowBinary(bytes: Uint8Array, gen: Generation): DecodedBatch {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 0;
  const need = (n: number) => {
    if (p + n > bytes.length) throw new Error(`RowBinary body truncated at byte ${p}`);
  };
  const u8 = () => (need(1), bytes[p++]);
  const u16 = () => (need(2), p += 2, dv.getUint16(p - 2, true));
  const u32 = () => (need(4), p += 4, dv.getUint32(p - 4, true));
  const s = () => {
    let n = 0, shift = 1;
    for (;;) {
      const c = u8();
      n += (c & 0x7f) * shift;
      if (c < 0x80) break;
      shift *= 128;
      if (shift > 2 ** 35) throw new Error(`RowBinary length too long at byte ${p}`);
    }
    need(n);
    p += n;
    return utf8Decoder.decode(bytes.subarray(p - n, p));
  };
  const ip = () => (need(16), p += 16, ipv6Text(bytes.subarray(p - 16, p)));
  const rows: Row[] = [];
  const ids: string[] = [];
  while (p < bytes.length) {
    const r = emptyRow();
    let ms: number;
    if (gen === "modern") {
      const lo = u32();
      ms = u32() * 4294967296 + lo;
    } else {
      u16(); // date: the day of ts
      ms = u32() * 1000;
      ms += u16();
    }
    r.ts = new Date(ms).toISOString();
    r.host = s();
    r.server = s();
    r.pid = u32();
    r.capture = s();
    r.src = gen === "modern" ? ip() : s();
    r.src_port = u16();
    r.dst = gen === "modern" ? ip() : s();
    r.dst_port = u16();
    r.method = s();
    r.path = s();
    r.http_version = s();
    r.host_header = s();
    r.user_agent = s();
    r.ja4h = s();
    r.ja4h_r = s();
    r.ja4h_o = s();
    r.ja4h_ro = s();
    r.ja4 = s();
    r.ja4_r = s();
    r.ja4t = s();
    r.tls_server_name = s();
    r.truncated = u8() === 1;
    ids.push(s());
    rows.push(r);
  }
  return { rows, ids };
}
