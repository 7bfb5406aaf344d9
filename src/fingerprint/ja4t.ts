/**
 * JA4T (client SYN) and JA4TS (server SYN-ACK): `window_options_mss_wscale` (spec §4, §5).
 * FoxIO License 1.1 (patent pending).
 *
 * Absent values differ between FoxIO's tools (spec §4.3). The default is the Rust tool's convention, because
 * the offline `fingerprint --pcap` output is compared with the Rust tool's: no options → empty section,
 * no MSS → `0`, no window scale → `0`. The "foxio" convention (Wireshark plugin, Zeek, FoxIO's mapping CSV)
 * prints `00` for each absent part, MSS with at least two digits and a zero shift as `00`.
 */
import { parseTcpOptions, TCPOPT_MSS, TCPOPT_WSCALE, type TcpOption } from "../parse/tcp_options.ts";
import { bytesAt } from "../parse/bytes.ts";

export type AbsentConvention = "rust" | "foxio";
export const JA4T_ABSENT_DEFAULT: AbsentConvention = "rust";

export interface TcpHandshakePacket {
  /** The 16-bit window field as sent. */
  window: number;
  /** Parsed options (parseTcpOptions(...).options) or the raw option area. */
  options: TcpOption[] | Uint8Array;
}

export interface Ja4tOptions {
  absent?: AbsentConvention;
}

/** The parts of a SYN that JA4T reads, walked from the raw option bytes as parseTcpOptions walks them. */
const kindsScratch = new Uint8Array(64);
interface Memo {
  window: number;
  mss: number;
  ws: number;
  kinds: Uint8Array;
  foxio: boolean;
  fp: string;
}
/** Distinct SYN shapes seen (a client build has one): keyed by a hash, confirmed field by field on a hit. */
const memo = new Map<number, Memo>();
const MEMO_MAX = 4096;

/**
 * JA4T straight from the option bytes: no option objects, and the string is built once per distinct
 * (window, option kinds, MSS, window scale): every SYN of a client build is the same but for its timestamps.
 */
function fromBytes(window: number, area: Uint8Array, foxio: boolean): string {
  const n = area.length;
  let p = 0, k = 0, mss = -1, ws = -1;
  let h = (window * 31 + (foxio ? 7 : 3)) | 0;
  while (p < n && k < kindsScratch.length) {
    const kind = area[p];
    kindsScratch[k++] = kind;
    h = (Math.imul(h, 16777619) ^ kind) | 0;
    if (kind === 0 || kind === 1) {
      p++;
      continue;
    }
    const len = p + 1 < n ? area[p + 1] : -1;
    if (len < 2 || p + len > n) break; // listed, then the walk stops (as parseTcpOptions)
    if (kind === TCPOPT_MSS && mss < 0 && len === 4) mss = (area[p + 2] << 8) | area[p + 3];
    if (kind === TCPOPT_WSCALE && ws < 0 && len === 3) ws = area[p + 2];
    p += len;
  }
  if (p < n && k === kindsScratch.length) {
    return fingerprintOf(window, parseTcpOptions(area).options, foxio); // > 64 options: not from a real stack
  }
  h = (Math.imul(h, 16777619) ^ (mss + 1)) | 0;
  h = (Math.imul(h, 16777619) ^ (ws + 1)) | 0;
  const m = memo.get(h);
  if (
    m !== undefined && m.window === window && m.mss === mss && m.ws === ws && m.foxio === foxio &&
    m.kinds.length === k && bytesAt(kindsScratch, 0, m.kinds)
  ) return m.fp;
  let kinds = "";
  for (let i = 0; i < k; i++) kinds += i === 0 ? String(kindsScratch[i]) : "-" + kindsScratch[i];
  const fp = format(window, kinds, mss < 0 ? undefined : mss, ws < 0 ? undefined : ws, foxio);
  if (memo.size >= MEMO_MAX) memo.clear();
  memo.set(h, { window, mss, ws, kinds: kindsScratch.slice(0, k), foxio, fp });
  return fp;
}

function format(
  window: number,
  kinds: string,
  mss: number | undefined,
  ws: number | undefined,
  foxio: boolean,
) {
  if (foxio) {
    return `${window}_${kinds || "00"}_${mss === undefined ? "00" : String(mss).padStart(2, "0")}_${
      ws === undefined || ws === 0 ? "00" : ws
    }`;
  }
  return `${window}_${kinds}_${mss ?? 0}_${ws ?? 0}`;
}

function fingerprint(pkt: TcpHandshakePacket, opts: Ja4tOptions): string {
  const foxio = (opts.absent ?? JA4T_ABSENT_DEFAULT) === "foxio";
  if (pkt.options instanceof Uint8Array) return fromBytes(pkt.window, pkt.options, foxio);
  return fingerprintOf(pkt.window, pkt.options, foxio);
}

/** From parsed options (the reference path; fromBytes must equal it). */
export function fingerprintOf(window: number, list: TcpOption[], foxio: boolean): string {
  let kinds = "";
  let mss: number | undefined;
  let ws: number | undefined;
  for (let i = 0; i < list.length; i++) {
    const o = list[i];
    kinds += i === 0 ? String(o.kind) : "-" + o.kind;
    if (o.kind === TCPOPT_MSS && mss === undefined && o.data.length === 2) mss = (o.data[0] << 8) | o.data[1];
    if (o.kind === TCPOPT_WSCALE && ws === undefined && o.data.length === 1) ws = o.data[0];
  }
  return format(window, kinds, mss, ws, foxio);
}

/** JA4T from the client's SYN. */
export function ja4t(syn: TcpHandshakePacket, opts: Ja4tOptions = {}): string {
  return fingerprint(syn, opts);
}

/** JA4TS from the server's SYN-ACK (same format as JA4T). */
export function ja4ts(synAck: TcpHandshakePacket, opts: Ja4tOptions = {}): string {
  return fingerprint(synAck, opts);
}
