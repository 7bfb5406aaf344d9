/**
 * JA4H: HTTP client fingerprint from one request head (spec §3). FoxIO License 1.1 (patent pending).
 * Works on an HTTP/1.x head and on an HTTP/2 (or /3) header list in wire order; pseudo-headers (`:method`,
 * `:path`, …) are left out as Python and Wireshark do (Rust counts them).
 */
import { count2 } from "./common.ts";
import { hash12, hash12Written, messageBlock } from "./sha.ts";

/** The input of ja4h: method, version code and header lines in wire order, names as sent. */
export interface HttpRequestHead {
  method: string;
  /** "10", "11", "20" (HTTP/2), "30" (HTTP/3); "HTTP/1.1" is accepted too. */
  version: "10" | "11" | "20" | "30" | string;
  headers: [name: string, value: string][];
  /**
   * The Cookie line's value, when `headers` holds it blanked: a cached header block shared by heads that
   * differ only in their cookies (src/parse/http1.ts) carries each head's own value here.
   */
  cookie?: string;
}

export interface Ja4h {
  ja4h: string;
  ja4h_r: string;
  ja4h_o: string;
  ja4h_ro: string;
}

/** SHA-256("") truncated: what Python and Wireshark print for b when a request has no header lines (§3.5). */
export const EMPTY_HEADERS_HASH = "e3b0c44298fc";

/** Method code: the first two characters of the method, lower-cased (Python's rule, §3.2); "0"-padded. */
export function methodCode(method: string): string {
  const m = method.slice(0, 2).toLowerCase();
  return m.length === 2 ? m : (m + "00").slice(0, 2);
}

/** Version code: "HTTP/1.1" → "11" (Python deletes the dot), a bare code is kept. */
export function httpVersionCode(v: string): string {
  let s = v.startsWith("HTTP/") ? v.slice(5) : v;
  s = s.replace(".", "");
  return s.length === 2 ? s : (s + "00").slice(0, 2);
}

/** Primary Accept-Language code (§3.4): cut at `,` and `;`, drop `-`, lower-case, 4 chars, "0"-padded. */
export function acceptLanguageCode(value: string | undefined): string {
  if (value === undefined) return "0000";
  let v = value.trimStart();
  const comma = v.indexOf(",");
  if (comma >= 0) v = v.slice(0, comma);
  const semi = v.indexOf(";");
  if (semi >= 0) v = v.slice(0, semi);
  v = v.replaceAll("-", "").toLowerCase().slice(0, 4);
  return (v + "0000").slice(0, 4);
}

/** Length of JA4H's a and b parts with the "_" between them: what a header block fixes whatever its cookies. */
export const JA4H_AB = 25;

// JA4H strings are built with join: V8 makes a concatenation of 13 characters or more a rope (ConsString),
// and the sinks' encoders, which read a value a character at a time, pay for a rope at every character.

export interface Cookie {
  name: string;
  pair: string;
}

/**
 * The `;`-separated pieces of a Cookie value, trimmed, empty ones left out (as split(";") + trim()), each
 * cut once at its first "=": one slice per piece (and one for its name) instead of a split array and a trim.
 */
export function cookiePieces(value: string, out: Cookie[]): void {
  for (let from = 0; from <= value.length;) {
    from = piece(value, from);
    if (pieceB > pieceA) {
      const pair = value.slice(pieceA, pieceB);
      out.push({ name: pieceEqAt === pieceB ? pair : pair.slice(0, pieceEqAt - pieceA), pair });
    }
  }
}

/** The last piece found by `piece`: value[pieceA, pieceB), trimmed; its name ends at pieceEqAt (≤ pieceB). */
let pieceA = 0, pieceB = 0, pieceEqAt = 0;

/** Finds the piece starting at `from` (sets pieceA, pieceB, pieceEqAt; empty: pieceB ≤ pieceA); the next from. */
function piece(value: string, from: number): number {
  let semi = value.indexOf(";", from);
  if (semi < 0) semi = value.length;
  let a = from, b = semi;
  while (a < b && isTrimmed(value.charCodeAt(a))) a++;
  while (b > a && isTrimmed(value.charCodeAt(b - 1))) b--;
  let eq = b > a ? value.indexOf("=", a) : b;
  if (eq < 0 || eq > b) eq = b;
  pieceA = a;
  pieceB = b;
  pieceEqAt = eq;
  return semi + 1;
}

/** What String.prototype.trim removes (ECMAScript WhiteSpace and LineTerminator). */
function isTrimmed(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0xa0 || c === 0xfeff || c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f ||
    c === 0x3000;
}

function byName(x: Cookie, y: Cookie): number {
  // Byte order (A-Z < _ < a-z); Array.prototype.sort is stable, so equal names keep wire order like Python.
  return x.name < y.name ? -1 : x.name > y.name ? 1 : 0;
}

/**
 * All four JA4H forms; with `full` false only `ja4h` (the others ""): what ships under the default privacy
 * settings, which blank the raw and original-order forms. Two SHA-256 computations fewer per new cookie
 * header, and no raw strings built.
 */
export function ja4h(req: HttpRequestHead, full = true): Ja4h {
  const names: string[] = [];
  const cookies: Cookie[] = [];
  let hasCookie = false;
  let hasReferer = false;
  let lang: string | undefined;
  const headers = req.headers;
  for (let i = 0; i < headers.length; i++) {
    const name = headers[i][0], value = headers[i][1];
    if (name.length > 0 && name.charCodeAt(0) === 0x3a) continue; // HTTP/2 pseudo-header
    // Only three names matter: compared by length first, lower-cased only then (no string per header).
    const n = name.length;
    if (n === 6 && name.toLowerCase() === "cookie") {
      hasCookie = true;
      cookiePieces(req.cookie ?? value, cookies);
      continue;
    }
    if (n === 7 && name.toLowerCase() === "referer") {
      hasReferer = true;
      continue;
    }
    if (n === 15 && lang === undefined && name.toLowerCase() === "accept-language") lang = value;
    names.push(name);
  }
  const a = methodCode(req.method) + httpVersionCode(req.version) + (hasCookie ? "c" : "n") +
    (hasReferer ? "r" : "n") + count2(names.length) + acceptLanguageCode(lang);
  const rawNames = names.join(",");
  const b = names.length === 0 ? EMPTY_HEADERS_HASH : hash12(rawNames);
  if (!full) return { ja4h: [a, b, cookieHashes(cookies)].join("_"), ja4h_r: "", ja4h_o: "", ja4h_ro: "" };
  const sorted = cookies.length > 1 ? cookies.slice().sort(byName) : cookies;
  const sortedNames = sorted.map((c) => c.name).join(",");
  const sortedPairs = sorted.map((c) => c.pair).join(",");
  const d = hash12(sortedPairs, false);
  const main = [a, b, hash12(sortedNames), d].join("_");
  const origNames = cookies.map((c) => c.name).join(",");
  const origPairs = cookies.map((c) => c.pair).join(",");
  return {
    ja4h: main,
    ja4h_r: a + "_" + rawNames + "_" + sortedNames + "_" + sortedPairs,
    ja4h_o: a + "_" + b + "_" + hash12(origNames) + "_" +
      (origPairs === sortedPairs ? d : hash12(origPairs, false)),
    ja4h_ro: a + "_" + rawNames + "_" + origNames + "_" + origPairs,
  };
}

/**
 * JA4H's c and d parts, "c_d", for the pieces of a request's Cookie lines: the hashes of the sorted names and
 * of the sorted name=value pairs. The values' hash stays out of hash12's memo (shared with the lists that
 * repeat for every client: a user's values would push them out); ja4hWithCookie keeps a few hundred apart.
 */
function cookieHashes(cookies: Cookie[]): string {
  if (cookies.length === 0) return EMPTY_COOKIES;
  if (cookies.length > 1) cookies.sort(byName);
  let names = cookies[0].name, pairs = cookies[0].pair;
  for (let i = 1; i < cookies.length; i++) {
    names += "," + cookies[i].name;
    pairs += "," + cookies[i].pair;
  }
  return hash12(names) + "_" + hash12(pairs, false); // a rope: the caller joins it into the JA4H
}

const EMPTY_COOKIES = hash12("") + "_" + hash12("");

/**
 * The JA4H whose a and b parts with their "_" are `ab` (JA4H_AB + 1 characters of another head's JA4H) and
 * whose c and d parts hash this Cookie value.
 */
export function ja4hWithCookie(ab: string, cookie: string): string {
  let cd = cookieMemo.get(cookie);
  if (cd === undefined) {
    cd = cookieCd(cookie);
    if (seenBefore(cd)) {
      if (cookieMemo.size >= COOKIE_MEMO_MAX) cookieMemo.clear();
      cookieMemo.set(cookie, cd);
    }
  }
  return [ab, cd].join("");
}

/** A Cookie value's pieces (at most COOKIE_PIECES): trimmed [from, to), the name ending at `eq`. */
const COOKIE_PIECES = 64;
const pieceFrom = new Int32Array(COOKIE_PIECES);
const pieceTo = new Int32Array(COOKIE_PIECES);
const pieceEq = new Int32Array(COOKIE_PIECES);
const pieceOrder = new Int32Array(COOKIE_PIECES);

/**
 * cookieHashes of a Cookie value's pieces without an object or a string per piece: the pieces found as
 * offsets, sorted by name in place (stable, as Array.prototype.sort), the names joined for hash12's memo
 * (they repeat for every visitor of a site) and the name=value pairs written as bytes straight into the
 * SHA-256 block. Values with more pieces or a non-ASCII character take cookieHashes.
 */
function cookieCd(value: string): string {
  let n = 0;
  for (let from = 0; from <= value.length;) {
    from = piece(value, from);
    if (pieceB > pieceA) {
      if (n === COOKIE_PIECES) return cookieHashesOf(value);
      pieceFrom[n] = pieceA;
      pieceTo[n] = pieceB;
      pieceEq[n] = pieceEqAt;
      pieceOrder[n] = n;
      n++;
    }
  }
  if (n === 0) return EMPTY_COOKIES;
  for (let i = 1; i < n; i++) {
    const k = pieceOrder[i];
    let j = i - 1;
    while (j >= 0 && nameAfter(value, pieceOrder[j], k)) {
      pieceOrder[j + 1] = pieceOrder[j];
      j--;
    }
    pieceOrder[j + 1] = k;
  }
  let names = value.slice(pieceFrom[pieceOrder[0]], pieceEq[pieceOrder[0]]);
  for (let i = 1; i < n; i++) names += "," + value.slice(pieceFrom[pieceOrder[i]], pieceEq[pieceOrder[i]]);
  const c = hash12(names); // before the block is written: hash12 loads its input into the same block
  let total = n - 1;
  for (let i = 0; i < n; i++) total += pieceTo[i] - pieceFrom[i];
  const buf = messageBlock(total);
  let at = 0;
  for (let i = 0; i < n; i++) {
    if (i > 0) buf[at++] = 0x2c; // ","
    const p = pieceOrder[i];
    for (let x = pieceFrom[p], to = pieceTo[p]; x < to; x++) {
      const ch = value.charCodeAt(x);
      if (ch > 0x7f) return cookieHashesOf(value); // UTF-8 bytes: through the string
      buf[at++] = ch;
    }
  }
  return c + "_" + hash12Written(at);
}

/** Whether piece i's name sorts after piece k's (UTF-16 code units, as `<` on the name strings). */
function nameAfter(value: string, i: number, k: number): boolean {
  const ai = pieceFrom[i], li = pieceEq[i] - ai, ak = pieceFrom[k], lk = pieceEq[k] - ak;
  const m = li < lk ? li : lk;
  for (let x = 0; x < m; x++) {
    const d = value.charCodeAt(ai + x) - value.charCodeAt(ak + x);
    if (d !== 0) return d > 0;
  }
  return li > lk;
}

function cookieHashesOf(value: string): string {
  const cookies: Cookie[] = [];
  cookiePieces(value, cookies);
  return cookieHashes(cookies);
}

/**
 * JA4H's "c_d" by Cookie value, for the last few hundred values seen twice: a visitor's browser sends its
 * cookie with every request of a page, over several connections and with other header lines (other blocks),
 * and a long cookie costs a SHA-256 block per 64 bytes. Small, and emptied when full. In memory only, as the
 * request itself is.
 */
const COOKIE_MEMO_MAX = 512;
const cookieMemo = new Map<string, string>();

/**
 * Values seen once, by the last 8 hex digits of their "c_d" (the pairs' SHA-256: a hash for free), one per
 * slot. A new visitor's value comes once: memoised on first sight it would outlive the young generation (the
 * memo turns over in milliseconds under load) and be promoted for nothing. Two values sharing a slot cost one
 * admission early or late, never a wrong result.
 */
const SEEN_SLOTS = 4096;
const seen = new Int32Array(SEEN_SLOTS);

/** Whether a "c_d" came before (its slot holds its hash); records it if not. */
function seenBefore(cd: string): boolean {
  let h = 0;
  for (let i = cd.length - 8; i < cd.length; i++) {
    const c = cd.charCodeAt(i);
    h = (h << 4) | (c <= 0x39 ? c - 0x30 : c - 0x57);
  }
  const slot = h & (SEEN_SLOTS - 1);
  if (seen[slot] === h) return true;
  seen[slot] = h;
  return false;
}

/** Values in the memo (for tests). */
export function cookieMemoSize(): number {
  return cookieMemo.size;
}
