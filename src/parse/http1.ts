/**
 * HTTP/1.x request heads (RFC 9112): request line + header lines up to the empty line.
 * Header order and name case are kept as sent (JA4H needs both); bare LF line ends are accepted.
 * `Http1RequestStream` follows one client→server byte stream: heads split across reads, pipelined requests,
 * request bodies skipped (Content-Length and chunked), garbage and oversize heads counted and skipped.
 */
import {
  type ErrorCounts,
  fail,
  NEED_MORE,
  newErrorCounts,
  ok,
  type Parsed,
  type ParseErrorCode,
  type Streamed,
} from "./errors.ts";
import type { HttpRequestHead } from "../fingerprint/ja4h.ts";
import { bytesAt } from "./bytes.ts";

/** Largest request head accepted, terminator included. */
export const MAX_HEAD = 64 * 1024;

export interface RequestHead extends HttpRequestHead {
  method: string;
  /** Request target as sent (origin form, absolute form, `*`, or authority form for CONNECT). */
  target: string;
  /** JA4H version code: "10", "11" (from `HTTP/1.0`, `HTTP/1.1`). */
  version: string;
  /** The version token as sent, e.g. `HTTP/1.1`. */
  versionText: string;
  /** Header lines in wire order; names exactly as sent, values with surrounding spaces/tabs trimmed. */
  headers: [name: string, value: string][];
  /** Bytes of the head including the final empty line. */
  headLength: number;
  /**
   * The cached header block (shared by every head with the same header lines but for their Cookie and Referer
   * values: never mutate `headers`). Its Cookie and Referer values are blank when it was keyed without them;
   * the head's own Cookie value is then `cookie`.
   */
  block?: HeaderBlock;
}

const LF = 0x0a;
const CR = 0x0d;
const decoder = new TextDecoder();

/**
 * Offset just past the empty line that ends a head starting at `from` (bare LF line ends accepted), or -1 if
 * not there yet; only line ends before `limit` count. The one head search of the program (offline CONNECT
 * replies use it too).
 */
export function headEnd(b: Uint8Array, from = 0, limit = MAX_HEAD): number {
  const n = Math.min(b.length, limit);
  let i = b.indexOf(LF, from);
  while (i >= 0 && i < n) {
    const j = i + 1;
    if (j < b.length && b[j] === LF) return j + 1;
    if (j + 1 < b.length && b[j] === CR && b[j + 1] === LF) return j + 2;
    i = b.indexOf(LF, j);
  }
  return -1;
}

function isTokenChar(c: number): boolean {
  // RFC 9110 tchar
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    (c !== 0x22 && c !== 0x28 && c !== 0x29 && c !== 0x2c && c !== 0x2f && c !== 0x3a && c !== 0x3b &&
      c !== 0x3c && c !== 0x3d && c !== 0x3e && c !== 0x3f && c !== 0x40 && c !== 0x5b && c !== 0x5c &&
      c !== 0x5d && c !== 0x7b && c !== 0x7d && c > 0x20 && c < 0x7f);
}

const VERSION_RE = /^HTTP\/(\d)\.(\d)$/;

function trimOws(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === 0x20 || s.charCodeAt(a) === 0x09)) a++;
  while (b > a && (s.charCodeAt(b - 1) === 0x20 || s.charCodeAt(b - 1) === 0x09)) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

/**
 * Parses one request head at the start of `buf`. NeedMore when the terminating empty line has not arrived
 * (and the buffer is still under the cap); "oversize" past the cap; "malformed" for a bad request line or
 * header line. Leading empty lines are not skipped here (the stream does that).
 */
export function parseRequestHead(buf: Uint8Array, maxHead = MAX_HEAD): Streamed<RequestHead> {
  const end = headEnd(buf, 0, maxHead);
  if (end < 0) {
    return buf.length >= maxHead ? fail("oversize", `no end of head in ${maxHead} bytes`) : NEED_MORE;
  }
  if (end > maxHead) return fail("oversize", `head of ${end} bytes`);
  const r = parseHeadText(decoder.decode(buf.subarray(0, end)));
  if (r.ok) r.value.headLength = end;
  return r;
}

/**
 * A whole head's text (through its empty line) parsed in place: each header line cut once into its name and
 * its trimmed value (no array of lines, no copy of a line). The caller sets headLength (bytes, not text).
 */
function parseHeadText(text: string): Parsed<RequestHead> {
  const lf = text.indexOf("\n");
  const r = parseRequestLine(text, lf);
  if (!r.ok) return r;
  const headers: [string, string][] = [];
  for (let pos = lf + 1; pos < text.length;) {
    let nl = text.indexOf("\n", pos);
    if (nl < 0) nl = text.length;
    const e = nl > pos && text.charCodeAt(nl - 1) === 0x0d ? nl - 1 : nl;
    if (e === pos) break; // the empty line
    const c0 = text.charCodeAt(pos);
    if (c0 === 0x20 || c0 === 0x09) {
      // Obsolete line folding: continue the previous value.
      if (headers.length === 0) return fail("malformed", "continuation line before any header");
      const last = headers[headers.length - 1];
      last[1] = last[1] + " " + trimOws(text.slice(pos, e));
    } else {
      const colon = text.indexOf(":", pos);
      if (colon <= pos || colon >= e) {
        return fail(
          "malformed",
          `header line without a name: ${JSON.stringify(text.slice(pos, Math.min(e, pos + 32)))}`,
        );
      }
      let a = colon + 1, b = e;
      while (a < b && (text.charCodeAt(a) === 0x20 || text.charCodeAt(a) === 0x09)) a++;
      while (b > a && (text.charCodeAt(b - 1) === 0x20 || text.charCodeAt(b - 1) === 0x09)) b--;
      headers.push([text.slice(pos, colon), text.slice(a, b)]);
    }
    pos = nl + 1;
  }
  r.value.headers = headers;
  return r;
}

const NO_HEADERS: [string, string][] = [];
const HTTP11 = "HTTP/1.1";
const HTTP10 = "HTTP/1.0";
/** Methods returned as shared strings (no copy per request; equal heads then share the same string). */
const METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"];

/** text[0, len) when it is one of METHODS (all tokens: no check needed), else undefined. */
function knownMethod(text: string, len: number): string | undefined {
  for (let i = 0; i < METHODS.length; i++) {
    const m = METHODS[i];
    if (m.length === len && text.startsWith(m)) return m;
  }
  return undefined;
}

/**
 * The request line text[0, lf) (lf: its line feed; a CR before it is not part of the line): method token,
 * target, HTTP/1.x version, as a head without headers (the caller sets headers, headLength and block).
 * Reads `text` in place: no copy of the line.
 */
function parseRequestLine(text: string, lf: number): Parsed<RequestHead> {
  const e = lf > 0 && text.charCodeAt(lf - 1) === 0x0d ? lf - 1 : lf;
  let sp1 = text.indexOf(" ");
  if (sp1 >= e) sp1 = -1;
  const sp2 = e > 0 ? text.lastIndexOf(" ", e - 1) : -1;
  if (sp1 <= 0 || sp2 === sp1) return fail("malformed", "request line without method, target and version", 0);
  let method = knownMethod(text, sp1);
  if (method === undefined) {
    for (let i = 0; i < sp1; i++) {
      if (!isTokenChar(text.charCodeAt(i))) return fail("malformed", "method is not a token", i);
    }
    method = text.slice(0, sp1);
  }
  let versionText: string, version: string;
  // Nearly every request says HTTP/1.1 or HTTP/1.0: compared in place, the shared strings taken (no copy of
  // the token, no regex match and its array).
  if (e - sp2 === 9 && text.startsWith(HTTP11, sp2 + 1)) {
    versionText = HTTP11;
    version = "11";
  } else if (e - sp2 === 9 && text.startsWith(HTTP10, sp2 + 1)) {
    versionText = HTTP10;
    version = "10";
  } else {
    versionText = text.slice(sp2 + 1, e);
    const vm = VERSION_RE.exec(versionText);
    if (!vm) {
      return fail("malformed", `bad HTTP version ${JSON.stringify(versionText.slice(0, 16))}`, sp2 + 1);
    }
    if (vm[1] !== "1") return fail("unsupported", `HTTP/${vm[1]}.${vm[2]} head`, sp2 + 1);
    version = vm[1] + vm[2];
  }
  const target = text.slice(sp1 + 1, sp2).trim();
  if (target.length === 0) return fail("malformed", "empty request target", sp1);
  // Every field set here, in one order: one object shape for every head.
  return ok({
    method,
    target,
    version,
    versionText,
    headers: NO_HEADERS,
    headLength: 0,
    block: undefined,
    cookie: undefined,
  });
}

/**
 * What a request head's header block (every line after the request line) determines, kept per distinct block:
 * clients send the same headers request after request (a keep-alive connection, a crawler, a browser build),
 * so the header lines are split, trimmed and fingerprinted once, not per request. Whatever the caller derives
 * from the headers alone (JA4H per method/version, Host, User-Agent) lives in `derived`.
 */
export interface HeaderBlock {
  headers: [name: string, value: string][];
  framing: number | "chunked" | "malformed";
  /**
   * The block's text (after the request line's LF, through the empty line), the cache's key: a stream
   * compares its next head's block with its last one's first (a string comparison, no hash, no lookup).
   */
  text: string;
  /** Host and User-Agent values, filled by the first head that needs them (typed fields: no map lookup). */
  host: string | undefined;
  ua: string | undefined;
  /**
   * The caller's last result per (method, version), in fields: a block nearly always comes with one method and
   * version, so most heads compare two short strings instead of building a key and hashing it.
   */
  lastMethod: string;
  lastVersion: string;
  last: unknown;
  /** Results for other (method, version) pairs, by `${method} ${version}` (made when first needed). */
  derived: Map<string, unknown> | undefined;
  /**
   * A block keyed without its Cookie value: the last head's value, the caller's result for it and what that
   * was derived from (a keep-alive client sends its cookie again).
   */
  lastCookie: string | undefined;
  lastCookieBase: unknown;
  lastCookieFp: unknown;
  /**
   * A block keyed without its Cookie and Referer values: the whole block text of its last head, and the block
   * of a head that repeated it (values and all; found through this one, kept nowhere else).
   */
  lastWhole: string | undefined;
  twin: HeaderBlock | undefined;
}

/** A new block's derived state: nothing derived yet. */
export function newHeaderBlock(
  headers: [string, string][],
  framing: number | "chunked" | "malformed",
  text: string,
): HeaderBlock {
  return {
    headers,
    framing,
    text,
    host: undefined,
    ua: undefined,
    lastMethod: "",
    lastVersion: "",
    last: undefined,
    derived: undefined,
    lastCookie: undefined,
    lastCookieBase: undefined,
    lastCookieFp: undefined,
    lastWhole: undefined,
    twin: undefined,
  };
}

/**
 * Header blocks by their text. Bounded by entries and by the text kept; when full it starts over (cheap, and
 * a working set of repeating blocks refills at once). Blocks over `maxBlock` characters are not kept.
 */
export class HeaderBlockCache {
  #map = new Map<string, HeaderBlock>();
  #chars = 0;
  hits = 0;
  misses = 0;
  constructor(readonly maxEntries = 4096, readonly maxChars = 4 * 1024 * 1024, readonly maxBlock = 8192) {}

  get size(): number {
    return this.#map.size;
  }

  /** The block cached under `key` (the caller counts hits and misses: one head may take two lookups). */
  get(key: string): HeaderBlock | undefined {
    return this.#map.get(key);
  }

  /** `block` is the key; a block keyed without cut values costs the whole text it keeps too (lastWhole). */
  set(block: string, e: HeaderBlock): void {
    if (block.length > this.maxBlock) return;
    const cost = block.length + (e.lastWhole?.length ?? 0);
    if (this.#map.size >= this.maxEntries || this.#chars + cost > this.maxChars) {
      this.#map.clear();
      this.#chars = 0;
    }
    this.#map.set(block, e);
    this.#chars += cost;
  }

  /** Text kept by a cached block beyond its key (a twin's); the next set starts over when over budget. */
  charge(chars: number): void {
    this.#chars += chars;
  }

  /** Hits found by a stream comparing a head with its previous block (no lookup), counted in `hits` too. */
  lastHits = 0;

  /** A stream's head had its previous block (no lookup needed): counted as a hit. */
  countHit(): void {
    this.hits++;
    this.lastHits++;
  }

  /**
   * The last short head that came twice in a row (on any stream), as bytes, and its parse: a load generator,
   * a health check or a bot flood sends one head byte for byte, and its next copy is then found by one
   * comparison of bytes, before any decoding (see Http1RequestStream.push). `lastText`: the previous head.
   */
  repeatBytes: Uint8Array = NO_BYTES;
  repeatResult: Streamed<RequestHead> | undefined;
  lastText = "";
  /** Heads found as repeatBytes (counted in `hits` and `lastHits` too). */
  repeats = 0;
}

/** Heads up to this long may become HeaderBlockCache.repeatBytes (a bot's or a tool's; a browser's are longer). */
const REPEAT_MAX = 256;

/**
 * parseRequestHead for a buffer that holds exactly one whole head (its end already found), through the cache:
 * on a hit only the request line is parsed. Same results and errors as parseRequestHead (only heads that
 * parsed are cached, and the request line is always checked).
 */
export function parseRequestHeadCached(
  head: Uint8Array,
  cache: HeaderBlockCache,
  maxHead = MAX_HEAD,
  last?: HeaderBlock,
): Streamed<RequestHead> {
  if (head.length > maxHead) return parseRequestHead(head, maxHead);
  return cachedHead(head.length, decoder.decode(head), cache, last);
}

/**
 * The head whose text is `text` (the caller's decoding, made once) and `bytes` long. Its block's text is
 * compared with `last`'s (the stream's previous block: a keep-alive client repeats it); then it is looked up
 * in the cache by its key (blockKey): its text without its Cookie and Referer values, when it has them. A hit
 * parses the request line only, a miss parses the text. A head whose whole text a cut block's last head had
 * too (a load generator, a client replaying a request) gets a block of its own, the cut block's `twin`.
 */
function cachedHead(
  bytes: number,
  text: string,
  cache: HeaderBlockCache,
  last: HeaderBlock | undefined,
): Streamed<RequestHead> {
  const lf = text.indexOf("\n");
  const whole = text.slice(lf + 1);
  if (last !== undefined && whole === last.text) {
    cache.countHit();
    return fromBlock(text, lf, bytes, last, undefined);
  }
  const key = blockKey(text, lf);
  if (key === undefined) {
    const hit = cache.get(whole);
    if (hit === undefined) return parsed(text, bytes, cache, whole, undefined);
    cache.hits++;
    return fromBlock(text, lf, bytes, hit, undefined);
  }
  const again = last !== undefined && key === last.text;
  const hit = again ? last : cache.get(key);
  if (hit === undefined) return parsed(text, bytes, cache, key, whole);
  const twin = hit.twin !== undefined && hit.twin.text === whole ? hit.twin : undefined;
  if (twin === undefined) {
    if (hit.lastWhole === whole) {
      // The cut block's last head's text again: parsed into its twin.
      const r = parsed(text, bytes, cache, whole, undefined, false);
      if (r.ok) {
        hit.twin = r.value.block;
        cache.charge(whole.length);
      }
      return r;
    }
    hit.lastWhole = whole;
  }
  if (again) cache.countHit();
  else cache.hits++;
  return twin !== undefined
    ? fromBlock(text, lf, bytes, twin, undefined)
    : fromBlock(text, lf, bytes, hit, cutCookie);
}

/** A head of a cached block: its request line parsed, the rest from the block. */
function fromBlock(
  text: string,
  lf: number,
  bytes: number,
  b: HeaderBlock,
  cookie: string | undefined,
): Streamed<RequestHead> {
  const r = parseRequestLine(text, lf);
  if (r.ok) {
    r.value.headers = b.headers;
    r.value.headLength = bytes;
    r.value.block = b;
    r.value.cookie = cookie;
  }
  return r;
}

/**
 * A head parsed whole, its block cached under `key` (unless not `keep`: a twin, the caller keeps it): its text, or
 * (`whole` given) its text without the values blockKey cut, which the block's own header list then holds
 * blank.
 */
function parsed(
  text: string,
  bytes: number,
  cache: HeaderBlockCache,
  key: string,
  whole: string | undefined,
  keep = true,
): Streamed<RequestHead> {
  cache.misses++;
  const r = parseHeadText(text);
  if (r.ok) {
    const h = r.value;
    h.headLength = bytes;
    if (whole !== undefined && cutCookie !== undefined && !oneCookie(h.headers, cutCookie)) {
      // Not the one Cookie line the key was cut around: a block of its own, not cached.
      h.block = newHeaderBlock(h.headers, bodyFraming(h), whole);
      return r;
    }
    if (whole !== undefined) {
      h.cookie = cutCookie;
      blankCut(h.headers, cutCookie !== undefined, cutReferer);
    }
    h.block = newHeaderBlock(h.headers, bodyFraming(h), key);
    h.block.lastWhole = whole;
    if (keep) cache.set(key, h.block);
  }
  return r;
}

/** The value of the Cookie line blockKey cut from its last key (undefined: none cut); whether a Referer was. */
let cutCookie: string | undefined;
let cutReferer = false;

/**
 * A head's cache key: its header block (the text after the request line) without the values of its Cookie
 * and Referer lines. Browsers send one build's header lines request after request, but a cookie is a user's
 * and a referer a page's: keyed by the whole text, nearly every head of real traffic would miss (and its
 * block, kept for nothing, would outlive the young generation). JA4H takes from a Referer only that it is
 * there, and the Cookie value goes with each head (`cookie`). The first line spelled as browsers send it is
 * cut; a block whose Cookie is not that line alone (another Cookie line, a continuation) is never cached under
 * such a key (see parsed), so a hit on one is a head with that one Cookie line. undefined when there is
 * nothing to cut. Sets cutCookie and cutReferer.
 */
function blockKey(text: string, lf: number): string | undefined {
  const c = text.indexOf("\nCookie:", lf);
  const r = text.indexOf("\nReferer:", lf);
  cutCookie = undefined;
  cutReferer = r >= 0;
  if (c < 0 && r < 0) return undefined;
  const cv = c + 8, rv = r + 9; // where the values start
  const ce = c < 0 ? -1 : lineEnd(text, cv), re = r < 0 ? -1 : lineEnd(text, rv);
  if (c >= 0) cutCookie = trimOws(text.slice(cv, ce));
  if (r < 0) return text.slice(lf + 1, cv) + text.slice(ce);
  if (c < 0) return text.slice(lf + 1, rv) + text.slice(re);
  return c < r
    ? text.slice(lf + 1, cv) + text.slice(ce, rv) + text.slice(re)
    : text.slice(lf + 1, rv) + text.slice(re, cv) + text.slice(ce);
}

/** Where the line holding `from` ends (its CR or LF). */
function lineEnd(text: string, from: number): number {
  const nl = text.indexOf("\n", from);
  return nl < 0 ? text.length : text.charCodeAt(nl - 1) === 0x0d && nl - 1 >= from ? nl - 1 : nl;
}

/** Is `value` the value of the head's only Cookie header (whatever its case), spelled "Cookie"? */
function oneCookie(headers: [string, string][], value: string): boolean {
  let found = false;
  for (let i = 0; i < headers.length; i++) {
    const [n, v] = headers[i];
    if (n.length !== 6 || n.toLowerCase() !== "cookie") continue;
    if (found || n !== "Cookie" || v !== value) return false;
    found = true;
  }
  return found;
}

/** Blanks the cut values in a block's own header list: the block is shared, its first head's values are not. */
function blankCut(headers: [string, string][], cookie: boolean, referer: boolean): void {
  for (let i = 0; i < headers.length; i++) {
    const n = headers[i][0];
    if ((cookie && n === "Cookie") || (referer && n === "Referer")) headers[i] = [n, ""];
  }
}

/** Does the line starting at `p` look like a request line ("TOKEN SP ... HTTP/1.x")? undefined = line incomplete. */
function looksLikeRequestLine(b: Uint8Array, p: number): boolean | undefined {
  const lf = b.indexOf(LF, p);
  if (lf < 0) return b.length - p > 8192 ? false : undefined;
  let i = p;
  while (i < lf && b[i] >= 0x41 && b[i] <= 0x5a) i++;
  if (i === p || b[i] !== 0x20) return false;
  let e = lf;
  if (e > p && b[e - 1] === CR) e--;
  // ends in "HTTP/1.x"
  return e - 8 > i && b[e - 8] === 0x48 && b[e - 7] === 0x54 && b[e - 6] === 0x54 && b[e - 5] === 0x50 &&
    b[e - 4] === 0x2f && b[e - 3] === 0x31 && b[e - 2] === 0x2e;
}

type BodyState =
  | { kind: "none" }
  | { kind: "skip"; left: number; chunked: boolean } // a Content-Length body or one chunk's data
  | { kind: "chunk-size" }
  | { kind: "chunk-data-end" }
  | { kind: "trailers" };

/** Shared immutable states: a new stream (one per connection) allocates neither a buffer nor a state object. */
const NO_BYTES = new Uint8Array(0);
const BODY_NONE: BodyState = Object.freeze({ kind: "none" });

export interface Http1StreamOptions {
  maxHead?: number;
  /** Shared across streams: repeated header blocks are parsed once. */
  cache?: HeaderBlockCache;
}

/**
 * One direction (client → server) of an HTTP/1.x connection. `push` returns the request heads completed by
 * these bytes, in order. Errors are counted in `errors` (by code) and the stream resynchronises on the next
 * line that looks like a request line, so one bad request does not lose the rest of the connection.
 */
/** What `errors` reads until a stream's first error: most streams never have one (no object per stream). */
const NO_ERRORS: Readonly<ErrorCounts> = Object.freeze(newErrorCounts());

export class Http1RequestStream {
  #errors: ErrorCounts | undefined;
  /** Errors by code (a shared all-zero record until the first). */
  get errors(): Readonly<ErrorCounts> {
    return this.#errors ?? NO_ERRORS;
  }
  /** Heads returned so far. */
  requests = 0;
  /** Body bytes skipped so far. */
  bodyBytes = 0;
  /**
   * Bytes examined while looking for the end of a head or trailers, and bytes copied into the buffer: work
   * that must stay linear in the bytes pushed however the client splits them (hostile 1-byte segments).
   */
  scanned = 0;
  copied = 0;
  /** Unconsumed bytes: store[0, len). Grows by doubling, so a head sent a byte at a time costs linear time. */
  private store: Uint8Array = NO_BYTES;
  private len = 0;
  /** Where the search for the end of the head (or trailers) resumes: bytes before it hold no terminator. */
  private scan = 0;
  private body: BodyState = BODY_NONE;
  private resync = false;
  private readonly maxHead: number;
  private readonly cache: HeaderBlockCache | undefined;
  /** The header block of the last head returned (from the cache): the next head is compared with it first. */
  #last: HeaderBlock | undefined;

  constructor(opts: Http1StreamOptions = {}) {
    this.maxHead = opts.maxHead ?? MAX_HEAD;
    this.cache = opts.cache;
  }

  /** Bytes currently buffered (at most about maxHead). */
  get buffered(): number {
    return this.len;
  }

  /** Appends to the store (amortised O(1) per byte) and returns the unconsumed bytes. */
  private append(bytes: Uint8Array): Uint8Array {
    const need = this.len + bytes.length;
    if (need > this.store.length) {
      const grown = new Uint8Array(Math.max(need, this.store.length * 2, 256));
      grown.set(this.store.subarray(0, this.len));
      this.store = grown;
    }
    this.store.set(bytes, this.len);
    this.copied += bytes.length;
    this.len = need;
    return this.store.subarray(0, need);
  }

  /** Keeps b[p..] for the next push (copied: the caller may reuse its buffer); `scan` is relative to b. */
  private keep(b: Uint8Array, p: number): void {
    const rest = b.length - p;
    this.scan = Math.max(0, this.scan - p);
    if (rest <= 0) {
      this.len = 0;
      this.scan = 0;
      // Let a store grown by one huge head go once it is consumed.
      if (this.store.length > 16384) this.store = NO_BYTES;
      return;
    }
    if (b.buffer === this.store.buffer) {
      // Already in the store: move it to the front only when something before it was consumed.
      if (p > 0) {
        this.store.copyWithin(0, p, b.length);
        this.copied += rest;
      }
    } else {
      if (rest > this.store.length) this.store = new Uint8Array(Math.max(rest, 256));
      this.store.set(b.subarray(p));
      this.copied += rest;
    }
    this.len = rest;
  }

  private count(code: ParseErrorCode): void {
    (this.#errors ??= newErrorCounts())[code]++;
  }

  push(bytes: Uint8Array): RequestHead[] {
    const out: RequestHead[] = [];
    if (bytes.length === 0) return out;
    // Nothing buffered (the common case): parse the caller's bytes in place.
    const b = this.len === 0 ? bytes : this.append(bytes);
    let p = 0;
    for (;;) {
      const st = this.body;
      if (st.kind === "skip") {
        const n = Math.min(st.left, b.length - p);
        st.left -= n;
        p += n;
        this.bodyBytes += n;
        if (st.left > 0) break;
        this.body = st.chunked ? { kind: "chunk-data-end" } : BODY_NONE;
        continue;
      }
      if (st.kind === "chunk-size") {
        const lf = b.indexOf(LF, p);
        if (lf < 0) {
          if (b.length - p > 4096) p = this.bodyError("malformed", b.length);
          break;
        }
        const line = decoder.decode(b.subarray(p, lf)).replace(/\r$/, "");
        const m = /^([0-9a-fA-F]{1,8})[ \t]*(;.*)?$/.exec(line);
        if (!m) {
          p = this.bodyError("malformed", lf + 1);
          continue;
        }
        const size = parseInt(m[1], 16);
        p = lf + 1;
        this.body = size === 0 ? { kind: "trailers" } : { kind: "skip", left: size, chunked: true };
        continue;
      }
      if (st.kind === "chunk-data-end") {
        if (b.length - p < 1) break;
        if (b[p] === LF) p += 1;
        else if (b[p] === CR) {
          if (b.length - p < 2) break;
          if (b[p + 1] !== LF) {
            p = this.bodyError("malformed", p);
            continue;
          }
          p += 2;
        } else {
          p = this.bodyError("malformed", p);
          continue;
        }
        this.body = { kind: "chunk-size" };
        continue;
      }
      if (st.kind === "trailers") {
        // Trailer lines end with an empty line; the common case is just CRLF.
        if (b.length - p < 1) break;
        if (b[p] === LF || (b[p] === CR && b.length - p >= 2 && b[p + 1] === LF)) {
          p += b[p] === LF ? 1 : 2;
          this.body = BODY_NONE;
          continue;
        }
        if (b[p] === CR) break;
        const from = Math.max(p, this.scan);
        const e = headEnd(b, from, p + this.maxHead);
        this.scanned += (e < 0 ? b.length : e) - from;
        if (e < 0) {
          if (b.length - p >= this.maxHead) p = this.bodyError("oversize", b.length);
          else this.scan = Math.max(p, b.length - 2);
          break;
        }
        this.scan = 0;
        p = e;
        this.body = BODY_NONE;
        continue;
      }
      // Expecting a request head.
      if (this.resync) {
        const r = this.findRequestLine(b, p);
        if (r < 0) {
          // Keep only an incomplete last line; a request line may continue in the next push.
          const lf = b.lastIndexOf(LF);
          p = lf >= p ? lf + 1 : p;
          if (b.length - p > 8192) p = b.length;
          break;
        }
        p = r;
        this.resync = false;
      }
      // RFC 9112 §2.2: ignore empty lines before a request line.
      while (p < b.length && (b[p] === LF || (b[p] === CR && p + 1 < b.length && b[p + 1] === LF))) {
        p += b[p] === LF ? 1 : 2;
      }
      if (p >= b.length) break;
      // Find the end of the head first, resuming where the last push stopped (linear in the bytes sent).
      let end = -1, text: string | undefined;
      let r: Streamed<RequestHead> | undefined;
      const cache = this.cache;
      if (
        cache !== undefined && this.scan === 0 && cache.repeatResult !== undefined &&
        bytesAt(b, p, cache.repeatBytes)
      ) {
        // The short head last sent twice in a row, once more: its parse again, without decoding.
        end = p + cache.repeatBytes.length;
        r = cache.repeatResult;
        cache.repeats++;
        cache.countHit();
        this.scanned += end - p;
      } else if (cache !== undefined && this.scan === 0) {
        // Fast path for a head that arrives whole (nearly always): decode once (native), then two native
        // searches of the text, instead of a byte-level search line by line. Text offsets are byte offsets
        // only for ASCII; otherwise (or when the head is not whole) the byte search below decides.
        const n = Math.min(b.length - p, this.maxHead);
        // The whole buffer (a read of one head, nearly always): no view to make.
        const t = decoder.decode(p === 0 && n === b.length ? b : b.subarray(p, p + n));
        if (t.length === n) {
          const a = t.indexOf("\n\r\n"), c = t.indexOf("\n\n");
          const e = a < 0 ? (c < 0 ? -1 : c + 2) : c < 0 || a < c ? a + 3 : c + 2;
          if (e > 0) {
            end = p + e;
            text = e === n ? t : t.slice(0, e);
            this.scanned += e;
          }
        }
      }
      if (r === undefined) {
        const from = Math.max(p, this.scan);
        if (end < 0) {
          end = headEnd(b, from, p + this.maxHead);
          this.scanned += (end < 0 ? b.length : end) - from;
        }
        if (end < 0 && b.length - p < this.maxHead) {
          this.scan = Math.max(p, b.length - 2);
          break;
        }
        this.scan = 0;
        if (text !== undefined) {
          r = cachedHead(end - p, text, cache!, this.#last);
          if (r.ok && text.length <= REPEAT_MAX && text === cache!.lastText) {
            cache!.repeatBytes = b.slice(p, end);
            cache!.repeatResult = r;
          }
          cache!.lastText = text;
        } else {
          r = end >= 0 && cache
            ? parseRequestHeadCached(b.subarray(p, end), cache, this.maxHead, this.#last)
            : parseRequestHead(b.subarray(p, end < 0 ? b.length : end), this.maxHead);
        }
      }
      if (!r.ok) {
        if (r.needMore) break;
        this.count(r.error.code);
        this.resync = true;
        // Drop the bad line (or everything, when oversize) before looking for the next request line.
        if (r.error.code === "oversize") p = b.length;
        else {
          const lf = b.indexOf(LF, p);
          p = lf < 0 ? b.length : lf + 1;
        }
        continue;
      }
      const head = r.value;
      p += head.headLength;
      this.requests++;
      out.push(head);
      if (head.block !== undefined) this.#last = head.block;
      const framing = head.block ? head.block.framing : bodyFraming(head);
      if (framing === "malformed") {
        this.count("malformed");
        this.resync = true;
      } else if (framing === "chunked") this.body = { kind: "chunk-size" };
      else if (framing > 0) this.body = { kind: "skip", left: framing, chunked: false };
    }
    this.keep(b, p);
    return out;
  }

  /**
   * For a byte gap in the stream (lost capture data): returns the buffered, incomplete head parsed as far as its
   * last complete line (undefined if there is none or it does not parse), and resets the stream so it
   * resynchronises on the next request line. `headLength` is the number of bytes that were buffered.
   */
  takePartial(): RequestHead | undefined {
    const b = this.store.slice(0, this.len);
    const wasHead = this.body.kind === "none" && !this.resync;
    this.len = 0;
    this.scan = 0;
    this.body = BODY_NONE;
    this.resync = true;
    if (!wasHead || b.length === 0) return undefined;
    const lf = b.lastIndexOf(LF);
    if (lf < 0) return undefined;
    const head = new Uint8Array(lf + 3);
    head.set(b.subarray(0, lf + 1));
    head.set([CR, LF], lf + 1);
    const r = parseRequestHead(head, Math.max(this.maxHead, head.length + 1));
    if (!r.ok) return undefined;
    r.value.headLength = b.length;
    return r.value;
  }

  /** Counts a body framing error and switches to resynchronisation from `p`. */
  private bodyError(code: ParseErrorCode, p: number): number {
    this.count(code);
    this.body = BODY_NONE;
    this.resync = true;
    return p;
  }

  /** Offset of the next line start (at or after p, at a line start) that looks like a request line; -1 if none. */
  private findRequestLine(b: Uint8Array, p: number): number {
    let q = p;
    while (q < b.length) {
      const r = looksLikeRequestLine(b, q);
      if (r === true) return q;
      if (r === undefined) return -1;
      const lf = b.indexOf(LF, q);
      if (lf < 0) return -1;
      q = lf + 1;
    }
    return -1;
  }
}

/** Body length of a request: bytes to skip, "chunked", or "malformed" (conflicting/invalid Content-Length). */
export function bodyFraming(head: RequestHead): number | "chunked" | "malformed" {
  let cl: number | undefined;
  let chunked = false;
  for (const [name, value] of head.headers) {
    const l = name.toLowerCase();
    if (l === "transfer-encoding") {
      const codings = value.toLowerCase().split(",");
      chunked = codings[codings.length - 1].trim() === "chunked";
    } else if (l === "content-length") {
      for (const part of value.split(",")) {
        const v = part.trim();
        if (!/^\d{1,15}$/.test(v)) return "malformed";
        const n = Number(v);
        if (cl !== undefined && cl !== n) return "malformed";
        cl = n;
      }
    }
  }
  if (chunked) return "chunked";
  return cl ?? 0;
}
