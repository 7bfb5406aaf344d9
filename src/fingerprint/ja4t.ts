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

function fingerprint(pkt: TcpHandshakePacket, opts: Ja4tOptions): string {
  const list = pkt.options instanceof Uint8Array ? parseTcpOptions(pkt.options).options : pkt.options;
  let kinds = "";
  let mss: number | undefined;
  let ws: number | undefined;
  for (let i = 0; i < list.length; i++) {
    const o = list[i];
    kinds += i === 0 ? String(o.kind) : "-" + o.kind;
    if (o.kind === TCPOPT_MSS && mss === undefined && o.data.length === 2) mss = (o.data[0] << 8) | o.data[1];
    if (o.kind === TCPOPT_WSCALE && ws === undefined && o.data.length === 1) ws = o.data[0];
  }
  if ((opts.absent ?? JA4T_ABSENT_DEFAULT) === "foxio") {
    return `${pkt.window}_${kinds || "00"}_${mss === undefined ? "00" : String(mss).padStart(2, "0")}_${
      ws === undefined || ws === 0 ? "00" : ws
    }`;
  }
  return `${pkt.window}_${kinds}_${mss ?? 0}_${ws ?? 0}`;
}

/** JA4T from the client's SYN. */
export function ja4t(syn: TcpHandshakePacket, opts: Ja4tOptions = {}): string {
  return fingerprint(syn, opts);
}

/** JA4TS from the server's SYN-ACK (same format as JA4T). */
export function ja4ts(synAck: TcpHandshakePacket, opts: Ja4tOptions = {}): string {
  return fingerprint(synAck, opts);
}
