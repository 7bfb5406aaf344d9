/**
 * Streaming parser of the client → server half of an HTTP/2 connection (RFC 9113), as a server sees
 * it: connection preface, then frames. Yields each request's header list as soon as its header block
 * is complete (END_HEADERS). Bodies are skipped without buffering.
 *
 * Never throws. Protocol violations, floods and over-limit header blocks are counted in `errors` and
 * drop the connection's state (`dropped`), because HPACK state can't be trusted after them; bytes
 * pushed afterwards are counted in `droppedBytes` and ignored.
 */
import { be16, be24, be32, concatBytes } from "./bytes.ts";
import { type ErrorCounts, newErrorCounts, type ParseErrorCode } from "./errors.ts";
import { DEFAULT_MAX_HEADER_LIST_SIZE, type HeaderField, HpackDecoder } from "./hpack.ts";

export const H2_PREFACE: Uint8Array = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export const H2_FRAME = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

const FLAG_END_STREAM = 0x1;
const FLAG_ACK = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;

export interface H2Priority {
  exclusive: boolean;
  dependsOn: number;
  /** 1..256 */
  weight: number;
}

export interface H2Request {
  streamId: number;
  /** Pseudo-headers (RFC 9113 8.3.1), kept out of `headers`. */
  method?: string;
  path?: string;
  authority?: string;
  scheme?: string;
  /** :protocol of an extended CONNECT (RFC 8441). */
  protocol?: string;
  /** Regular header fields in wire order, names as sent (lowercase in valid HTTP/2). */
  headers: HeaderField[];
  /** The HEADERS frame carried END_STREAM (no body). */
  endStream: boolean;
  priority?: H2Priority;
}

export interface Http2Limits {
  /** Payload cap for frames that are buffered (everything but DATA, which is skipped). Default 64 KiB. */
  maxFramePayload?: number;
  /** Decoded header list cap (RFC 7540 accounting). Default 64 KiB. */
  maxHeaderListSize?: number;
  /** Cap on one header block (HEADERS + CONTINUATION payloads). Default 2 × maxHeaderListSize. */
  maxHeaderBlockSize?: number;
  /** CONTINUATION frames allowed in one header block. Default 64. */
  maxContinuations?: number;
  /**
   * Frames that carry no request (control frames, empty DATA, unknown types) allowed in a row before it
   * is called a flood. Default 10000.
   */
  maxIdleFrames?: number;
  /** HPACK table ceiling: the server's SETTINGS_HEADER_TABLE_SIZE if known. Default 64 KiB (lenient). */
  headerTableSize?: number;
}

export interface Http2Stats {
  frames: number;
  requests: number;
  /** HEADERS on an already-open stream (trailers): decoded to keep HPACK in step, not yielded. */
  trailers: number;
  dataBytes: number;
  unknownFrames: number;
}

export interface H2GoAway {
  lastStreamId: number;
  errorCode: number;
}

type State = "preface" | "frames" | "dropped";

export class Http2RequestStream {
  /** Exceptions caught inside push() in this process: bugs turned into a dropped state (fuzzing checks it). */
  static exceptions = 0;
  readonly errors: ErrorCounts = newErrorCounts();
  readonly stats: Http2Stats = { frames: 0, requests: 0, trailers: 0, dataBytes: 0, unknownFrames: 0 };
  /** The client's SETTINGS values, latest wins. */
  readonly clientSettings: Map<number, number> = new Map();
  goaway: H2GoAway | undefined;
  /** Why the state was dropped, when it was. */
  dropReason: string | undefined;
  /** Bytes ignored after the state was dropped. */
  droppedBytes = 0;

  private readonly maxFramePayload: number;
  private readonly maxHeaderBlockSize: number;
  private readonly maxContinuations: number;
  private readonly maxIdleFrames: number;
  private readonly hpack: HpackDecoder;
  private state: State = "preface";
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Remaining DATA payload bytes to skip without buffering. */
  private skip = 0;
  private idleFrames = 0;
  private lastStreamId = 0;
  /** Header block being assembled across CONTINUATION frames. */
  private block:
    | {
      streamId: number;
      parts: Uint8Array[];
      size: number;
      frames: number;
      endStream: boolean;
      priority?: H2Priority;
    }
    | undefined;

  constructor(limits: Http2Limits = {}) {
    const listSize = limits.maxHeaderListSize ?? DEFAULT_MAX_HEADER_LIST_SIZE;
    this.maxFramePayload = limits.maxFramePayload ?? 65536;
    this.maxHeaderBlockSize = limits.maxHeaderBlockSize ?? 2 * listSize;
    this.maxContinuations = limits.maxContinuations ?? 64;
    this.maxIdleFrames = limits.maxIdleFrames ?? 10000;
    this.hpack = new HpackDecoder({ maxHeaderListSize: listSize, maxTableSize: limits.headerTableSize });
  }

  get dropped(): boolean {
    return this.state === "dropped";
  }

  /** Feeds the next bytes of the client → server stream; returns requests completed by them. */
  push(bytes: Uint8Array): H2Request[] {
    const out: H2Request[] = [];
    if (this.state === "dropped") {
      this.droppedBytes += bytes.length;
      return out;
    }
    try {
      this.consume(bytes, out);
      this.own(bytes);
    } catch (e) {
      // A bug, not bad input: still never escape to the caller.
      Http2RequestStream.exceptions++;
      this.drop("malformed", `http2 parser exception: ${e instanceof Error ? e.message : String(e)}`);
    }
    return out;
  }

  private drop(code: ParseErrorCode, reason: string): void {
    this.errors[code]++;
    this.state = "dropped";
    this.dropReason = reason;
    this.droppedBytes += this.buffered;
    this.chunks = [];
    this.buffered = 0;
    this.block = undefined;
  }

  private consume(bytes: Uint8Array, out: H2Request[]): void {
    if (this.skip > 0) {
      const n = Math.min(this.skip, bytes.length);
      this.skip -= n;
      bytes = bytes.subarray(n);
    }
    if (bytes.length > 0) {
      this.chunks.push(bytes);
      this.buffered += bytes.length;
    }
    for (;;) {
      if (this.state === "preface") {
        const have = this.peek(Math.min(this.buffered, H2_PREFACE.length));
        for (let i = 0; i < have.length; i++) {
          if (have[i] !== H2_PREFACE[i]) return this.drop("malformed", "not an HTTP/2 client preface");
        }
        if (have.length < H2_PREFACE.length) return;
        this.discard(H2_PREFACE.length);
        this.state = "frames";
      }
      if (this.state !== "frames" || this.buffered < 9) return;
      const h = this.peek(9);
      const length = be24(h, 0);
      const type = h[3], flags = h[4];
      const streamId = u31(h, 5);
      if (type === H2_FRAME.DATA && this.block === undefined) {
        // Bodies are not buffered: skip what's here, remember the rest.
        this.discard(9);
        this.stats.frames++;
        if (!this.onData(length, flags, streamId)) return;
        const n = Math.min(length, this.buffered);
        this.discard(n);
        this.skip = length - n;
        if (this.skip > 0) return;
        continue;
      }
      if (length > this.maxFramePayload) {
        return this.drop("oversize", `frame type ${type} payload ${length} > ${this.maxFramePayload}`);
      }
      if (this.buffered < 9 + length) return;
      this.discard(9);
      const payload = this.take(length);
      this.stats.frames++;
      this.frame(type, flags, streamId, payload, out);
      if (this.state !== "frames") return;
    }
  }

  private onData(length: number, flags: number, streamId: number): boolean {
    if (streamId === 0) {
      this.drop("malformed", "DATA on stream 0");
      return false;
    }
    this.stats.dataBytes += length;
    // Empty DATA without END_STREAM does nothing: a known flood vector.
    if (length === 0 && !(flags & FLAG_END_STREAM)) return this.idle();
    this.idleFrames = 0;
    return true;
  }

  /** Counts a frame that produced nothing; false (and dropped) on flood. */
  private idle(): boolean {
    if (++this.idleFrames > this.maxIdleFrames) {
      this.drop("oversize", `frame flood: ${this.idleFrames} frames without a request`);
      return false;
    }
    return true;
  }

  private frame(type: number, flags: number, streamId: number, p: Uint8Array, out: H2Request[]): void {
    if (this.block !== undefined && type !== H2_FRAME.CONTINUATION) {
      return this.drop("malformed", `frame type ${type} inside a header block`);
    }
    switch (type) {
      case H2_FRAME.HEADERS:
        return this.onHeaders(flags, streamId, p, out);
      case H2_FRAME.CONTINUATION:
        return this.onContinuation(flags, streamId, p, out);
      case H2_FRAME.DATA:
        // Only reached with a header block open, which was refused above.
        return;
      case H2_FRAME.SETTINGS:
        if (streamId !== 0 || p.length % 6 !== 0 || ((flags & FLAG_ACK) && p.length !== 0)) {
          return this.drop("malformed", "bad SETTINGS frame");
        }
        for (let i = 0; i < p.length; i += 6) {
          const id = be16(p, i);
          const v = be32(p, i + 2);
          this.clientSettings.set(id, v);
        }
        break;
      case H2_FRAME.PING:
        if (streamId !== 0 || p.length !== 8) return this.drop("malformed", "bad PING frame");
        break;
      case H2_FRAME.GOAWAY:
        if (streamId !== 0 || p.length < 8) return this.drop("malformed", "bad GOAWAY frame");
        this.goaway = { lastStreamId: u31(p, 0), errorCode: be32(p, 4) };
        break;
      case H2_FRAME.WINDOW_UPDATE:
        if (p.length !== 4) return this.drop("malformed", "bad WINDOW_UPDATE frame");
        break;
      case H2_FRAME.RST_STREAM:
        if (streamId === 0 || p.length !== 4) return this.drop("malformed", "bad RST_STREAM frame");
        break;
      case H2_FRAME.PRIORITY:
        if (streamId === 0 || p.length !== 5) return this.drop("malformed", "bad PRIORITY frame");
        break;
      case H2_FRAME.PUSH_PROMISE:
        return this.drop("malformed", "PUSH_PROMISE from a client");
      default:
        this.stats.unknownFrames++;
    }
    this.idle();
  }

  private onHeaders(flags: number, streamId: number, p: Uint8Array, out: H2Request[]): void {
    if (streamId === 0) return this.drop("malformed", "HEADERS on stream 0");
    let start = 0, end = p.length;
    if (flags & FLAG_PADDED) {
      if (p.length < 1) return this.drop("malformed", "HEADERS padding length missing");
      end -= p[0];
      start = 1;
    }
    let priority: H2Priority | undefined;
    if (flags & FLAG_PRIORITY) {
      if (end - start < 5) return this.drop("malformed", "HEADERS priority truncated");
      priority = { exclusive: (p[start] & 0x80) !== 0, dependsOn: u31(p, start), weight: p[start + 4] + 1 };
      start += 5;
    }
    if (end < start) return this.drop("malformed", "HEADERS padding longer than payload");
    const frag = p.subarray(start, end);
    this.block = {
      streamId,
      parts: [frag],
      size: frag.length,
      frames: 1,
      endStream: (flags & FLAG_END_STREAM) !== 0,
      priority,
    };
    if (flags & FLAG_END_HEADERS) this.finishBlock(out);
    else if (this.block.size > this.maxHeaderBlockSize) this.drop("oversize", "header block over cap");
  }

  private onContinuation(flags: number, streamId: number, p: Uint8Array, out: H2Request[]): void {
    const b = this.block;
    if (b === undefined) return this.drop("malformed", "CONTINUATION without HEADERS");
    if (streamId !== b.streamId) return this.drop("malformed", "CONTINUATION on another stream");
    b.parts.push(p);
    b.size += p.length;
    if (++b.frames > this.maxContinuations + 1) return this.drop("oversize", "CONTINUATION flood");
    if (b.size > this.maxHeaderBlockSize) return this.drop("oversize", "header block over cap");
    if (flags & FLAG_END_HEADERS) this.finishBlock(out);
  }

  private finishBlock(out: H2Request[]): void {
    const b = this.block!;
    this.block = undefined;
    const block = b.parts.length === 1 ? b.parts[0] : concatBytes(b.parts, b.size);
    const r = this.hpack.decode(block);
    if (!r.ok) return this.drop(r.error.code, `hpack: ${r.error.message}`);
    if (b.streamId <= this.lastStreamId) {
      // Trailers (or a reused id): decoded only to keep the HPACK table in step.
      this.stats.trailers++;
      this.idle();
      return;
    }
    if ((b.streamId & 1) === 0) return this.drop("malformed", `client stream id ${b.streamId} is even`);
    this.lastStreamId = b.streamId;
    const req: H2Request = { streamId: b.streamId, headers: [], endStream: b.endStream };
    if (b.priority) req.priority = b.priority;
    for (const f of r.value) {
      const name = f[0];
      if (name.length > 0 && name.charCodeAt(0) === 0x3a) {
        if (name === ":method") req.method = f[1];
        else if (name === ":path") req.path = f[1];
        else if (name === ":authority") req.authority = f[1];
        else if (name === ":scheme") req.scheme = f[1];
        else if (name === ":protocol") req.protocol = f[1];
        // Other pseudo-headers (e.g. :status) are invalid in a request: ignored, not fatal.
      } else {
        req.headers.push(f);
      }
    }
    this.idleFrames = 0;
    this.stats.requests++;
    out.push(req);
  }

  /**
   * The bytes kept for the next push (an incomplete frame) that are still the caller's: copied, once, so the
   * caller may reuse its buffer (a ring buffer) — and nothing is copied when every frame was whole.
   */
  private own(caller: Uint8Array): void {
    const c = this.chunks;
    if (c.length > 0 && c[c.length - 1].buffer === caller.buffer) {
      this.chunks = [concatBytes(c, this.buffered)];
    }
    const b = this.block;
    if (b !== undefined) {
      for (let i = 0; i < b.parts.length; i++) {
        if (b.parts[i].buffer === caller.buffer) b.parts[i] = b.parts[i].slice();
      }
    }
  }

  private peek(n: number): Uint8Array {
    if (this.chunks.length > 0 && this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    const all = concatBytes(this.chunks, this.buffered);
    this.chunks = all.length > 0 ? [all] : [];
    return all.subarray(0, n);
  }

  /**
   * The next n bytes, a view valid during this push (a typed array costs ~1 µs to allocate: frames are
   * handled in place, and only what outlives the push is copied, by own()).
   */
  private take(n: number): Uint8Array {
    const r = this.peek(n);
    this.discard(n);
    return r;
  }

  /** Drops n buffered bytes (n <= buffered) without copying them. */
  private discard(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const first = this.chunks[0];
      if (first.length <= n) {
        this.chunks.shift();
        n -= first.length;
      } else {
        this.chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }
}

/** A 31-bit stream id or window increment (the top bit is reserved). */
function u31(p: Uint8Array, i: number): number {
  return be32(p, i) & 0x7fffffff;
}

/** Builds one HTTP/2 frame (for tests, fixtures and tools). */
export function h2Frame(type: number, flags: number, streamId: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(9 + payload.length);
  f[0] = (payload.length >> 16) & 0xff;
  f[1] = (payload.length >> 8) & 0xff;
  f[2] = payload.length & 0xff;
  f[3] = type;
  f[4] = flags;
  f[5] = (streamId >>> 24) & 0x7f;
  f[6] = (streamId >>> 16) & 0xff;
  f[7] = (streamId >>> 8) & 0xff;
  f[8] = streamId & 0xff;
  f.set(payload, 9);
  return f;
}
