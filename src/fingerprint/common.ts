/** Helpers shared by the JA4+ fingerprints (spec §0). */

/** RFC 8701 GREASE: both bytes equal, each with low nibble 0xa. */
export function isGrease(v: number): boolean {
  return (v & 0x0f0f) === 0x0a0a && (v >> 8) === (v & 0xff);
}

const HEX = "0123456789abcdef";
const HEX4: string[] = new Array(65536);

/** Four lower-case hex digits (memoised: the same few hundred codes recur in every hello). */
export function hex4(v: number): string {
  v &= 0xffff;
  return HEX4[v] ??= HEX[v >> 12] + HEX[(v >> 8) & 0xf] + HEX[(v >> 4) & 0xf] + HEX[v & 0xf];
}

/** Codes as 4-digit hex joined with ",". */
export function joinHex(codes: readonly number[]): string {
  const parts = new Array<string>(codes.length);
  for (let i = 0; i < codes.length; i++) parts[i] = hex4(codes[i]);
  return parts.join(",");
}

/** Two-digit decimal count, capped at 99. */
export function count2(n: number): string {
  return n > 99 ? "99" : n < 10 ? "0" + n : String(n);
}

/** TLS version code (spec §1.3). */
export function tlsVersionCode(v: number | undefined): string {
  switch (v) {
    case 0x0304:
      return "13";
    case 0x0303:
      return "12";
    case 0x0302:
      return "11";
    case 0x0301:
      return "10";
    case 0x0300:
      return "s3";
    case 0x0002:
      return "s2";
    case 0xfeff:
      return "d1";
    case 0xfefd:
      return "d2";
    case 0xfefc:
      return "d3";
    default:
      return "00";
  }
}

/**
 * How to print an ALPN name whose ends are not plain characters (spec §1.6):
 * - "reference": what FoxIO's tools print for their vectors — a byte >= 0x80 at either end prints `9` in its
 *   place, any other byte prints itself; a one-byte name prints its character twice.
 * - "hex": FoxIO's written rule — if both ends are ASCII alphanumerics print them, else print the first and
 *   last digit of the whole name in lower-case hex.
 */
export type AlpnRule = "reference" | "hex";

function isAlnum(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

/** ALPN code for a protocol name given as raw bytes; absent or empty → "00". */
export function alpnCode(name: Uint8Array | undefined, rule: AlpnRule = "reference"): string {
  if (!name || name.length === 0) return "00";
  const first = name[0];
  const last = name[name.length - 1];
  if (rule === "hex") {
    if (isAlnum(first) && isAlnum(last)) return String.fromCharCode(first, last);
    let hex = "";
    for (const b of name) hex += HEX[b >> 4] + HEX[b & 0xf];
    return hex[0] + hex[hex.length - 1];
  }
  const ch = (c: number) => (c >= 0x80 ? "9" : String.fromCharCode(c));
  return ch(first) + ch(last);
}
