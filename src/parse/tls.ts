/**
 * TLS record layer, handshake reassembly and ClientHello / ServerHello parsing (RFC 8446 / 5246 layouts).
 * Pure: bytes in, plain objects out; bad input gives a typed error, never an exception.
 */
import { be16, be24 } from "./bytes.ts";
import {
  type ErrorCounts,
  fail,
  NEED_MORE,
  type NeedMore,
  newErrorCounts,
  ok,
  type Parsed,
  type Streamed,
} from "./errors.ts";

/** Largest handshake message accepted (the biggest real ClientHellos are ~2 KB; certificates can be larger). */
export const MAX_HANDSHAKE = 64 * 1024;
/** RFC 8446 §5.2: a record may carry up to 2^14 + 256 bytes; allow the TLS 1.2 ciphertext bound too. */
const MAX_RECORD = (1 << 14) + 2048;

export const CONTENT_CHANGE_CIPHER_SPEC = 20;
export const CONTENT_ALERT = 21;
export const CONTENT_HANDSHAKE = 22;
export const CONTENT_APPLICATION_DATA = 23;

export const HS_CLIENT_HELLO = 1;
export const HS_SERVER_HELLO = 2;

export const EXT_SERVER_NAME = 0x0000;
export const EXT_SIGNATURE_ALGORITHMS = 0x000d;
export const EXT_ALPN = 0x0010;
export const EXT_SUPPORTED_VERSIONS = 0x002b;

export interface ClientHello {
  /** The ClientHello's own version field (not the record version). */
  legacyVersion: number;
  /** Cipher suite codes in wire order, GREASE included. */
  cipherSuites: number[];
  compressionMethods: number[];
  /** Extension types in wire order, GREASE included. */
  extensions: number[];
  /** First host_name of the SNI extension, if any (decoded as Latin-1 so no byte is lost). */
  serverName?: string;
  /** ALPN protocol names as raw bytes, wire order; empty when the extension is absent. */
  alpn: Uint8Array[];
  /** supported_versions list (GREASE included); undefined when the extension is absent. */
  supportedVersions?: number[];
  /** Codes inside signature_algorithms (0x000d) only, wire order; empty when absent. */
  signatureAlgorithms: number[];
}

export interface ServerHello {
  legacyVersion: number;
  cipherSuite: number;
  compressionMethod: number;
  /** Extension types in wire order. */
  extensions: number[];
  /** The single version in supported_versions, if present. */
  supportedVersion?: number;
  /** The protocol the server selected via ALPN, raw bytes. */
  alpn?: Uint8Array;
  /** RFC 8446 §4.1.3: a ServerHello whose random is the HelloRetryRequest magic. */
  helloRetryRequest: boolean;
}

export interface HandshakeMessage {
  type: number;
  /** Body after the 4-byte handshake header. */
  body: Uint8Array;
}

// SHA-256("HelloRetryRequest")
const HRR_RANDOM = new Uint8Array([
  0xcf,
  0x21,
  0xad,
  0x74,
  0xe5,
  0x9a,
  0x61,
  0x11,
  0xbe,
  0x1d,
  0x8c,
  0x02,
  0x1e,
  0x65,
  0xb8,
  0x91,
  0xc2,
  0xa2,
  0x11,
  0x16,
  0x7a,
  0xbb,
  0x8c,
  0x5e,
  0x07,
  0x9e,
  0x09,
  0xe2,
  0xc8,
  0xa8,
  0x33,
  0x9c,
]);

/**
 * Cheap classifier for the first bytes of a TCP stream: a TLS handshake record (0x16 0x03 0x00..0x04),
 * and when the 6th byte is there, a ClientHello (type 1). Works on 1..n bytes.
 */
export function looksLikeTls(b: Uint8Array): boolean {
  if (b.length < 1 || b[0] !== CONTENT_HANDSHAKE) return false;
  if (b.length >= 2 && b[1] !== 3) return false;
  if (b.length >= 3 && b[2] > 4) return false;
  if (b.length >= 5 && be16(b, 3) === 0) return false;
  if (b.length >= 6 && b[5] !== HS_CLIENT_HELLO) return false;
  return true;
}

function readU16List(b: Uint8Array, start: number, end: number): number[] {
  const out: number[] = [];
  for (let i = start; i + 1 < end; i += 2) out.push(be16(b, i));
  return out;
}

function latin1(b: Uint8Array, start: number, end: number): string {
  let s = "";
  for (let i = start; i < end; i++) s += String.fromCharCode(b[i]);
  return s;
}

/** Parses a ClientHello handshake body (the bytes after the 4-byte handshake header). */
export function parseClientHello(body: Uint8Array): Parsed<ClientHello> {
  const n = body.length;
  // version(2) random(32) session_id_len(1)
  if (n < 35) return fail("truncated", "ClientHello shorter than version+random", n);
  const legacyVersion = be16(body, 0);
  let p = 34;
  const sidLen = body[p++];
  if (sidLen > 32) return fail("malformed", "session_id longer than 32", p - 1);
  p += sidLen;
  if (p + 2 > n) return fail("truncated", "no cipher_suites length", p);
  const csLen = be16(body, p);
  p += 2;
  if (csLen & 1) return fail("malformed", "odd cipher_suites length", p - 2);
  if (p + csLen > n) return fail("truncated", "cipher_suites overrun", p);
  const cipherSuites = readU16List(body, p, p + csLen);
  p += csLen;
  if (p + 1 > n) return fail("truncated", "no compression_methods length", p);
  const cmLen = body[p++];
  if (p + cmLen > n) return fail("truncated", "compression_methods overrun", p);
  const compressionMethods: number[] = [];
  for (let i = p; i < p + cmLen; i++) compressionMethods.push(body[i]);
  p += cmLen;
  const hello: ClientHello = {
    legacyVersion,
    cipherSuites,
    compressionMethods,
    extensions: [],
    alpn: [],
    signatureAlgorithms: [],
  };
  // SSL 3.0 / TLS 1.0 hellos may end here: no extensions block at all.
  if (p === n) return ok(hello);
  if (p + 2 > n) return fail("truncated", "no extensions length", p);
  const extLen = be16(body, p);
  p += 2;
  if (p + extLen > n) return fail("truncated", "extensions overrun", p);
  const end = p + extLen;
  while (p < end) {
    if (p + 4 > end) return fail("malformed", "extension header overruns block", p);
    const type = be16(body, p);
    const len = be16(body, p + 2);
    const d = p + 4;
    if (d + len > end) return fail("malformed", `extension ${type} overruns block`, p);
    hello.extensions.push(type);
    const de = d + len;
    switch (type) {
      case EXT_SERVER_NAME:
        // server_name_list: len(2) { type(1) len(2) name }; content never affects the fingerprint.
        if (len >= 2 && hello.serverName === undefined) {
          const le = Math.min(de, d + 2 + be16(body, d));
          for (let q = d + 2; q + 3 <= le;) {
            const nt = body[q];
            const nl = be16(body, q + 1);
            if (q + 3 + nl > le) break;
            if (nt === 0) {
              hello.serverName = latin1(body, q + 3, q + 3 + nl);
              break;
            }
            q += 3 + nl;
          }
        }
        break;
      case EXT_ALPN:
        if (len >= 2) {
          const le = Math.min(de, d + 2 + be16(body, d));
          // One copy of the list, the names views of it: a typed array costs ~1 µs to allocate here (Deno
          // gives every one its own backing store), a view ~40 ns.
          const list = body.slice(d + 2, le);
          for (let q = 0; q < list.length;) {
            const pl = list[q];
            if (q + 1 + pl > list.length) break;
            hello.alpn.push(list.subarray(q + 1, q + 1 + pl));
            q += 1 + pl;
          }
        }
        break;
      case EXT_SUPPORTED_VERSIONS:
        if (len >= 1) {
          const le = Math.min(de, d + 1 + body[d]);
          hello.supportedVersions = readU16List(body, d + 1, le);
        } else hello.supportedVersions = [];
        break;
      case EXT_SIGNATURE_ALGORITHMS:
        if (len >= 2) {
          const le = Math.min(de, d + 2 + be16(body, d));
          hello.signatureAlgorithms = readU16List(body, d + 2, le);
        }
        break;
    }
    p = de;
  }
  return ok(hello);
}

/** Parses a ServerHello handshake body (after the 4-byte header), HelloRetryRequest included. */
export function parseServerHello(body: Uint8Array): Parsed<ServerHello> {
  const n = body.length;
  if (n < 35) return fail("truncated", "ServerHello shorter than version+random", n);
  const legacyVersion = be16(body, 0);
  let hrr = true;
  for (let i = 0; i < 32; i++) {
    if (body[2 + i] !== HRR_RANDOM[i]) {
      hrr = false;
      break;
    }
  }
  let p = 34;
  const sidLen = body[p++];
  if (sidLen > 32) return fail("malformed", "session_id longer than 32", p - 1);
  p += sidLen;
  if (p + 3 > n) return fail("truncated", "no cipher_suite/compression", p);
  const sh: ServerHello = {
    legacyVersion,
    cipherSuite: be16(body, p),
    compressionMethod: body[p + 2],
    extensions: [],
    helloRetryRequest: hrr,
  };
  p += 3;
  if (p === n) return ok(sh);
  if (p + 2 > n) return fail("truncated", "no extensions length", p);
  const extLen = be16(body, p);
  p += 2;
  if (p + extLen > n) return fail("truncated", "extensions overrun", p);
  const end = p + extLen;
  while (p < end) {
    if (p + 4 > end) return fail("malformed", "extension header overruns block", p);
    const type = be16(body, p);
    const len = be16(body, p + 2);
    const d = p + 4;
    if (d + len > end) return fail("malformed", `extension ${type} overruns block`, p);
    sh.extensions.push(type);
    if (type === EXT_SUPPORTED_VERSIONS && len >= 2) sh.supportedVersion = be16(body, d);
    else if (type === EXT_ALPN && len >= 3) {
      const pl = body[d + 2];
      if (d + 3 + pl <= d + len) sh.alpn = body.slice(d + 3, d + 3 + pl);
    }
    p = d + len;
  }
  return ok(sh);
}

/** Record at r[0..5+rl) holds the start of a plaintext ClientHello whose length fits the record. */
function plaintextClientHello(r: Uint8Array, rl: number): boolean {
  if (rl < 4 || r[5] !== HS_CLIENT_HELLO) return false;
  const len = be24(r, 6);
  return len >= 38 && len <= MAX_HANDSHAKE && r[9] === 3;
}

// Shared, never written: a fresh Uint8Array(0) per queue reset costs more than the rest of a small parse.
const EMPTY = new Uint8Array(0);

/** A growable byte queue that keeps a pushed chunk by reference until it must be merged. */
class ByteQueue {
  private buf: Uint8Array = EMPTY;
  /** The chunk kept by reference by the last push (see own()). */
  private pushed: Uint8Array = EMPTY;
  private start = 0;
  private end = 0;
  get length(): number {
    return this.end - this.start;
  }
  view(): Uint8Array {
    return this.buf.subarray(this.start, this.end);
  }
  push(b: Uint8Array): void {
    if (b.length === 0) return;
    if (this.length === 0) {
      // Zero-copy fast path: the common case is one whole record per push.
      this.buf = b;
      this.pushed = b;
      this.start = 0;
      this.end = b.length;
      return;
    }
    const need = this.length + b.length;
    const owned = new Uint8Array(Math.max(need, 2 * this.length, 512));
    owned.set(this.view(), 0);
    owned.set(b, this.length);
    this.buf = owned;
    this.start = 0;
    this.end = need;
  }
  /** Copies the buffered bytes if they are still the caller's pushed chunk, so the caller may reuse it. */
  own(): void {
    if (this.length > 0 && this.buf === this.pushed) {
      this.buf = this.view().slice();
      this.start = 0;
      this.end = this.buf.length;
    }
    this.pushed = EMPTY;
  }
  consume(n: number): void {
    this.start += n;
    if (this.start >= this.end) {
      this.buf = this.pushed = EMPTY;
      this.start = this.end = 0;
    }
  }
  clear(): void {
    this.buf = this.pushed = EMPTY;
    this.start = this.end = 0;
  }
}

export interface TlsHandshakeReaderOptions {
  /** Cap on one handshake message body (default 64 KiB). */
  maxHandshake?: number;
}

/**
 * Reassembles handshake messages from one direction of a TLS connection: feed the TCP payload in order with
 * `push`, then call `next()` until it returns NeedMore. Messages may span records and records may span pushes.
 * Once the stream turns encrypted (application data, or handshake records after ChangeCipherSpec other than
 * a post-HelloRetryRequest ClientHello) nothing more is produced. A fatal error
 * (garbage, oversize) is returned once and counted; the reader then stays `failed` and ignores further input.
 */
export class TlsHandshakeReader {
  readonly errors: ErrorCounts = newErrorCounts();
  /** Messages produced so far. */
  messages = 0;
  failed = false;
  /** True once ChangeCipherSpec / application data was seen: later handshake records are encrypted. */
  encrypted = false;
  private ccsSeen = false;
  private readonly max: number;
  private readonly rec = new ByteQueue();
  private readonly hs = new ByteQueue();

  constructor(opts: TlsHandshakeReaderOptions = {}) {
    this.max = opts.maxHandshake ?? MAX_HANDSHAKE;
  }

  /** Bytes held (records and handshake data not yet produced): the owner's memory accounting. */
  get buffered(): number {
    return this.rec.length + this.hs.length;
  }

  push(bytes: Uint8Array): void {
    if (this.failed || this.encrypted) return;
    this.rec.push(bytes);
  }

  /**
   * Makes the reader independent of the chunks pushed so far: the unread rest of a chunk it kept by
   * reference is copied. For callers that push views of a buffer they reuse (a capture reader's window);
   * others need not call it.
   */
  ownBuffered(): void {
    this.rec.own();
  }

  private die(code: "malformed" | "oversize" | "unsupported", msg: string): Parsed<never> {
    this.failed = true;
    this.errors[code]++;
    this.rec.clear();
    this.hs.clear();
    return fail(code, msg);
  }

  /**
   * The next whole handshake message. Its body may be a view of the bytes last pushed (one whole message in
   * one record, almost every ClientHello): valid until the caller reuses those bytes, so parse or copy it
   * first (parseClientHello copies what it keeps).
   */
  next(): Streamed<HandshakeMessage> {
    for (;;) {
      if (this.failed || this.encrypted) return NEED_MORE;
      // A whole handshake message already buffered?
      if (this.hs.length >= 4) {
        const h = this.hs.view();
        const len = be24(h, 1);
        if (len > this.max) return this.die("oversize", `handshake message of ${len} bytes`);
        if (h.length >= 4 + len) {
          // Copy so the caller's message survives later pushes into a reused buffer.
          const msg: HandshakeMessage = { type: h[0], body: h.slice(4, 4 + len) };
          this.hs.consume(4 + len);
          this.messages++;
          return ok(msg);
        }
      }
      // Need another record.
      if (this.rec.length < 5) return NEED_MORE as NeedMore;
      const r = this.rec.view();
      const ct = r[0];
      if (ct < CONTENT_CHANGE_CIPHER_SPEC || ct > CONTENT_APPLICATION_DATA || r[1] !== 3) {
        return this.die("malformed", `not a TLS record (type ${ct}, version ${r[1]}.${r[2]})`);
      }
      const rl = be16(r, 3);
      if (rl > MAX_RECORD) return this.die("oversize", `record of ${rl} bytes`);
      if (r.length < 5 + rl) return NEED_MORE;
      if (ct === CONTENT_HANDSHAKE) {
        if (rl === 0) return this.die("malformed", "empty handshake record");
        if (this.ccsSeen && !(this.hs.length === 0 && plaintextClientHello(r, rl))) {
          // After ChangeCipherSpec, handshake records are encrypted (TLS 1.2 Finished) — except the second
          // ClientHello a TLS 1.3 client sends after a HelloRetryRequest (RFC 8446 §D.4 middlebox mode).
          this.encrypted = true;
          this.rec.clear();
          this.hs.clear();
          return NEED_MORE;
        }
        if (this.hs.length === 0 && rl >= 4 && 4 + be24(r, 6) === rl) {
          // Fast path: one whole message in one record (almost every ClientHello): a view, no copy (a typed
          // array costs ~1 µs to allocate under Deno).
          const msg: HandshakeMessage = { type: r[5], body: r.subarray(9, 5 + rl) };
          this.rec.consume(5 + rl);
          this.messages++;
          return ok(msg);
        }
        if (this.hs.length + rl > this.max + 4) return this.die("oversize", "handshake data over the cap");
        // hs takes a reference when empty, so copy the payload out of the record buffer first.
        this.hs.push(r.slice(5, 5 + rl));
        this.rec.consume(5 + rl);
      } else if (ct === CONTENT_ALERT) {
        this.rec.consume(5 + rl);
      } else if (ct === CONTENT_CHANGE_CIPHER_SPEC) {
        this.ccsSeen = true;
        this.rec.consume(5 + rl);
      } else {
        this.encrypted = true;
        this.rec.clear();
        this.hs.clear();
        return NEED_MORE;
      }
    }
  }
}

/**
 * The body of the ClientHello when `bytes` start with one handshake record holding exactly one whole
 * ClientHello (almost every hello: a view, not a copy); undefined otherwise (TlsHandshakeReader decides then).
 * What the reader would produce from the same bytes.
 */
export function wholeClientHello(bytes: Uint8Array): Uint8Array | undefined {
  if (bytes.length < 9 || bytes[0] !== CONTENT_HANDSHAKE || bytes[1] !== 3 || bytes[5] !== HS_CLIENT_HELLO) {
    return undefined;
  }
  const rl = be16(bytes, 3);
  if (rl > MAX_RECORD || 5 + rl > bytes.length || 4 + be24(bytes, 6) !== rl) return undefined;
  return bytes.subarray(9, 5 + rl);
}

/**
 * Convenience for a buffer that starts at a TLS record header: returns the first handshake message's
 * ClientHello, NeedMore if the bytes are an incomplete prefix, or a typed error.
 */
export function readClientHello(bytes: Uint8Array): Streamed<ClientHello> {
  // Fast path (almost every hello): parsed in place — parseClientHello copies what it keeps — which skips
  // the reader's set-up and the body copy.
  const body = wholeClientHello(bytes);
  if (body !== undefined) return parseClientHello(body);
  const r = new TlsHandshakeReader();
  r.push(bytes);
  const m = r.next();
  if (!m.ok) return m;
  if (m.value.type !== HS_CLIENT_HELLO) {
    return fail("unsupported", `first handshake message is type ${m.value.type}`);
  }
  return parseClientHello(m.value.body);
}

/** Like readClientHello for the server side: the first message must be a ServerHello. */
export function readServerHello(bytes: Uint8Array): Streamed<ServerHello> {
  const r = new TlsHandshakeReader();
  r.push(bytes);
  const m = r.next();
  if (!m.ok) return m;
  if (m.value.type !== HS_SERVER_HELLO) {
    return fail("unsupported", `first handshake message is type ${m.value.type}`);
  }
  return parseServerHello(m.value.body);
}
