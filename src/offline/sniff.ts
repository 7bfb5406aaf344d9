/** Recognising what a direction of a connection carries from its first bytes. */
import { headEnd as http1HeadEnd, MAX_HEAD } from "../parse/http1.ts";

/** TLS: a handshake record (0x16) of major version 3. Undefined: one byte only, can't tell yet. */
export function looksLikeTls(b: Uint8Array): boolean | undefined {
  if (b[0] !== 0x16) return false;
  return b.length < 2 ? undefined : b[1] === 0x03;
}

/** "METHOD " with an upper-case token of 3–23 characters. */
export function looksLikeRequest(b: Uint8Array): boolean {
  let i = 0;
  while (i < b.length && i < 24 && ((b[i] >= 0x41 && b[i] <= 0x5a) || b[i] === 0x2d || b[i] === 0x5f)) i++;
  return i >= 3 && i < b.length && b[i] === 0x20;
}

/** Upper-case letters only: the start of a request line or of "HTTP/" split over tiny segments. */
export function allUpper(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] < 0x41 || b[i] > 0x5a) return false;
  return b.length > 0;
}

export function startsWith(b: Uint8Array, s: string): boolean {
  if (b.length < s.length) return false;
  for (let i = 0; i < s.length; i++) if (b[i] !== s.charCodeAt(i)) return false;
  return true;
}

/**
 * Offset just past the empty line that ends the HTTP head at the start of b (a tunnel's reply to CONNECT),
 * or -1 while it has not arrived: the HTTP/1 parser's own head search.
 */
export function headEnd(b: Uint8Array): number {
  return http1HeadEnd(b, 0, MAX_HEAD);
}
