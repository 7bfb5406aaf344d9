/** Recognising what a direction of a connection carries from its first bytes. */
import { MAX_HEAD, parseRequestHead } from "../parse/http1.ts";

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
 * or -1 while it has not arrived. The HTTP/1 parser's head search decides: parseRequestHead asks for more
 * bytes exactly while a prefix holds no end of head, so the end is the shortest prefix it does not, found
 * by bisection (a reply head is read once per CONNECT, and is a few hundred bytes).
 */
export function headEnd(b: Uint8Array): number {
  const complete = (n: number) => {
    const r = parseRequestHead(b.subarray(0, n));
    return r.ok || r.needMore !== true;
  };
  // Past MAX_HEAD the parser answers "oversize" whether or not a head ended: look no further.
  const n = Math.min(b.length, MAX_HEAD - 1);
  if (!complete(n)) return -1;
  let lo = 0; // incomplete
  let hi = n; // complete
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (complete(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}
