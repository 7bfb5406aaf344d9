/**
 * A connection's map key, the same from the kernel's bytes (the agent's EventView) and from a tuple's text
 * (rows, procfs, tests). The packet tracker and the correlator key every connection by it.
 *
 * IPv4 connections (IPv4-mapped IPv6 included) get a number: the client's address and port in the low 48
 * bits, the server's address and port as a small index above them. A number is hashed and compared in a few
 * nanoseconds; a `src|port|dst|port` string must be flattened, hashed and compared byte by byte, which cost
 * ~1.5 µs per connection across the trackers' maps at 65,536 connections. The index table holds the first
 * MAX_ENDPOINTS server endpoints seen and never changes an entry, so a tuple's key is the same for the
 * process's lifetime; connections to later endpoints keep the text key. IPv6 tuples get a short string made
 * of their addresses' groups and ports (v6Key), the same from bytes and from any form of their text.
 */
import type { Tuple } from "../sink/row.ts";
import { be16 } from "../parse/bytes.ts";

export type ConnKey = number | string;

/** Server (address, port) pairs that get an index: 2^5 × 2^48 stays below 2^53 (exact in a double). */
export const MAX_ENDPOINTS = 32;
const CLIENT_SPACE = 2 ** 48;
const endpoints = new Map<number, number>();

function endpointIndex(dst: number, dstPort: number): number {
  const e = dst * 65536 + dstPort;
  let i = endpoints.get(e);
  if (i === undefined) {
    if (endpoints.size >= MAX_ENDPOINTS) return -1;
    i = endpoints.size;
    endpoints.set(e, i);
  }
  return i;
}

/** The key of an IPv4 tuple, addresses as unsigned 32-bit numbers; -1 when the endpoint table is full. */
export function v4Key(src: number, srcPort: number, dst: number, dstPort: number): number {
  const i = endpointIndex(dst, dstPort);
  return i < 0 ? -1 : i * CLIENT_SPACE + src * 65536 + srcPort;
}

/** The string key: addresses as the trackers write them (IPv4-mapped as IPv4, IPv6 in lower case). */
export function textKey(src: string, srcPort: number, dst: string, dstPort: number): string {
  return src + "|" + srcPort + "|" + dst + "|" + dstPort;
}

/**
 * The key of an IPv6 tuple from its addresses' 16-bit groups (s: 8, d: 8): 19 UTF-16 units made by one call,
 * a NUL first (no text key has one). Flat and short, so it hashes and compares in a few nanoseconds, where a
 * text key was concatenated (a cons string, flattened by every lookup) and ~40 characters long.
 */
export function v6Key(s: ArrayLike<number>, srcPort: number, d: ArrayLike<number>, dstPort: number): string {
  return String.fromCharCode(
    0,
    s[0],
    s[1],
    s[2],
    s[3],
    s[4],
    s[5],
    s[6],
    s[7],
    srcPort,
    d[0],
    d[1],
    d[2],
    d[3],
    d[4],
    d[5],
    d[6],
    d[7],
    dstPort,
  );
}

/**
 * IPv6 text → its eight 16-bit groups in `out`; false for anything else (IPv4 text, a zone, a bad group).
 * "::" compression and an embedded dotted IPv4 tail are read, hex in either case.
 */
export function parseV6(a: string, out: number[]): boolean {
  if (a.indexOf(":") < 0 || a.indexOf("%") >= 0) return false;
  const dbl = a.indexOf("::");
  if (dbl >= 0 && a.indexOf("::", dbl + 1) >= 0) return false;
  const head = dbl < 0 ? a : a.slice(0, dbl), tail = dbl < 0 ? "" : a.slice(dbl + 2);
  const hs: number[] = [], ts: number[] = [];
  if (!v6Groups(head, hs) || !v6Groups(tail, ts)) return false;
  const n = hs.length + ts.length;
  if (dbl < 0 ? n !== 8 : n > 7) return false;
  for (let i = 0; i < 8; i++) {
    out[i] = i < hs.length ? hs[i] : i >= 8 - ts.length ? ts[i - (8 - ts.length)] : 0;
  }
  return true;
}

/** The ":"-separated groups of one side of "::" (a dotted IPv4 last group counts two). */
function v6Groups(part: string, out: number[]): boolean {
  if (part === "") return true;
  const groups = part.split(":");
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    if (i === groups.length - 1 && g.indexOf(".") >= 0) {
      const v = parseV4(g);
      if (v < 0) return false;
      out.push(v >>> 16, v & 0xffff);
      continue;
    }
    if (g.length < 1 || g.length > 4) return false;
    let v = 0;
    for (let j = 0; j < g.length; j++) {
      const c = g.charCodeAt(j);
      const x = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
      if (x < 0) return false;
      v = v * 16 + x;
    }
    out.push(v);
  }
  return true;
}

/** An IPv6 key's groups (src, dst), filled per key. */
const SRC6: number[] = [0, 0, 0, 0, 0, 0, 0, 0];
const DST6: number[] = [0, 0, 0, 0, 0, 0, 0, 0];

/** v6Key of the 16-byte addresses at `so` and `dof` of `b` (network order, as a record carries them). */
export function v6KeyAt(b: Uint8Array, so: number, srcPort: number, dof: number, dstPort: number): string {
  for (let i = 0; i < 8; i++) {
    SRC6[i] = be16(b, so + 2 * i);
    DST6[i] = be16(b, dof + 2 * i);
  }
  return v6Key(SRC6, srcPort, DST6, dstPort);
}

/** "1.2.3.4" (or "::ffff:1.2.3.4") as an unsigned 32-bit number; -1 for anything else, or a non-canonical form. */
export function parseV4(a: string): number {
  let i = a.length > 7 && a.charCodeAt(0) === 58 && a.startsWith("::ffff:") ? 7 : 0;
  let v = 0;
  for (let part = 0; part < 4; part++) {
    if (part > 0) {
      if (a.charCodeAt(i) !== 46) return -1; // '.'
      i++;
    }
    const start = i;
    let n = 0;
    for (; i < a.length && i - start < 4; i++) {
      const c = a.charCodeAt(i) - 48;
      if (c < 0 || c > 9) break;
      n = n * 10 + c;
    }
    const len = i - start;
    // Canonical only (as formatIPv4 writes it): 1-3 digits, no leading zero, ≤ 255.
    if (len === 0 || len > 3 || n > 255 || (len > 1 && a.charCodeAt(start) === 48)) return -1;
    v = v * 256 + n;
  }
  return i === a.length ? v : -1;
}

/** "::ffff:1.2.3.4" and "1.2.3.4" are the same client; IPv6 text compares in lower case. */
export function normAddr(a: string): string {
  return a.startsWith("::ffff:") && a.includes(".") ? a.slice(7) : a.toLowerCase();
}

/** A tuple that may carry its key already (the agent's EventView computes it once per event). */
export type Keyed = Tuple & { readonly connKey?: ConnKey };

/** The key of a tuple given as text (or the key it carries). */
export function connKeyOf(t: Keyed): ConnKey {
  if (t.connKey !== undefined) return t.connKey;
  const sp = t.src_port, dp = t.dst_port;
  const s = parseV4(t.src), d = s < 0 ? -1 : parseV4(t.dst);
  const ports = (sp & 0xffff) === sp && (dp & 0xffff) === dp;
  if (d >= 0 && ports) {
    const k = v4Key(s, sp, d, dp);
    if (k >= 0) return k;
  }
  if (s < 0 && ports && parseV6(t.src, SRC6) && parseV6(t.dst, DST6)) return v6Key(SRC6, sp, DST6, dp);
  return textKey(normAddr(t.src), sp, normAddr(t.dst), dp);
}
