/**
 * TCP option area parser (the `data offset × 4 − 20` bytes after the fixed header).
 * Walks the area the way Wireshark does (and therefore FoxIO's Rust tool, which reads Wireshark's
 * dissection): kinds 0 (EOL) and 1 (NOP) are one byte and the walk does not stop at EOL, so padding zeros
 * are listed; every other kind has a length byte covering kind + length + data; the walk stops at a length
 * below 2 or one that overruns the area.
 */
import { be16, be32 } from "./bytes.ts";

export const TCPOPT_EOL = 0;
export const TCPOPT_NOP = 1;
export const TCPOPT_MSS = 2;
export const TCPOPT_WSCALE = 3;
export const TCPOPT_SACK_PERMITTED = 4;
export const TCPOPT_SACK = 5;
export const TCPOPT_TIMESTAMP = 8;

export interface TcpOption {
  /** The kind byte as sent. */
  kind: number;
  /** Option data after kind and length (empty for EOL/NOP and for a malformed option). */
  data: Uint8Array;
  /** Set on the last entry when its length byte was missing, < 2 or overran the area; the walk stopped there. */
  malformed?: true;
}

export interface TcpOptions {
  /** Every option in header order, EOL/NOP and padding zeros included. */
  options: TcpOption[];
  mss?: number;
  /** Window-scale shift count as sent (not the multiplier). */
  wscale?: number;
  sackPermitted: boolean;
  /** SACK blocks as [left, right] edges. */
  sack?: [number, number][];
  timestamps?: { value: number; echo: number };
  /** True if the walk stopped early on a bad length. */
  malformed: boolean;
}

/** Parses an option area. Never throws; a bad length ends the walk and sets `malformed`. */
export function parseTcpOptions(area: Uint8Array): TcpOptions {
  const out: TcpOptions = { options: [], sackPermitted: false, malformed: false };
  const n = area.length;
  let p = 0;
  while (p < n) {
    const kind = area[p];
    if (kind === TCPOPT_EOL || kind === TCPOPT_NOP) {
      out.options.push({ kind, data: area.subarray(p + 1, p + 1) });
      p++;
      continue;
    }
    const len = p + 1 < n ? area[p + 1] : -1;
    if (len < 2 || p + len > n) {
      // Wireshark still shows the kind byte of a bogus option before giving up.
      out.options.push({ kind, data: area.subarray(p, p), malformed: true });
      out.malformed = true;
      break;
    }
    const data = area.subarray(p + 2, p + len);
    out.options.push({ kind, data });
    switch (kind) {
      case TCPOPT_MSS:
        if (data.length === 2 && out.mss === undefined) out.mss = be16(data, 0);
        break;
      case TCPOPT_WSCALE:
        if (data.length === 1 && out.wscale === undefined) out.wscale = data[0];
        break;
      case TCPOPT_SACK_PERMITTED:
        out.sackPermitted = true;
        break;
      case TCPOPT_SACK:
        out.sack = [];
        for (let i = 0; i + 8 <= data.length; i += 8) out.sack.push([be32(data, i), be32(data, i + 4)]);
        break;
      case TCPOPT_TIMESTAMP:
        if (data.length === 8) out.timestamps = { value: be32(data, 0), echo: be32(data, 4) };
        break;
    }
    p += len;
  }
  return out;
}
