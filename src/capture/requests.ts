/**
 * Request side of the capture: turns payload chunks read by the servers (recvfrom, apr_socket_recv,
 * SSL_read plaintext) into HTTP requests with their JA4H.
 *
 * One stream per (pid, fd, stream kind). Chunks are put in order by byte position, the protocol is chosen
 * from the first bytes (HTTP/1.x, the HTTP/2 preface, or TLS records — ciphertext, from which only the
 * ClientHello is taken), and each completed request head becomes a `Row` handed to the `RequestSink`. State is bounded:
 * least recently used streams are evicted past `maxStreams`, idle ones after `idleMs`, each counted.
 */
import { StreamAssembler } from "./assembler.ts";
import { LruMap } from "./lru.ts";
import {
  type HeaderBlock,
  HeaderBlockCache,
  Http1RequestStream,
  newHeaderBlock,
  type RequestHead,
} from "../parse/http1.ts";
import { Http2RequestStream } from "../parse/http2.ts";
import { HS_CLIENT_HELLO, parseClientHello, TlsHandshakeReader } from "../parse/tls.ts";
import { type Ja4h, ja4h, JA4H_AB, ja4hWithCookie } from "../fingerprint/ja4h.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import type { Row, Tuple } from "../sink/row.ts";
import { type ConnKey, connKeyOf, type Keyed } from "./connkey.ts";
import type { HelloOut } from "./packets.ts";

export type { Tuple };

/**
 * One chunk of bytes a server process read from a client socket. The agent passes its reusable EventView,
 * which has exactly these fields: nothing is allocated per chunk.
 */
export interface PayloadChunk extends Keyed {
  pid: number;
  fd: number;
  /** Monotonic nanoseconds (bpf_ktime_get_ns), as a double. */
  tsNs: number;
  server: string;
  /** Capture method that produced the chunk (tracepoint, kretprobe, uprobe, …). */
  capture: string;
  /** Plaintext from SSL_read rather than the raw socket stream. */
  plaintext: boolean;
  /** Byte position of `data` in the connection's stream. */
  pos: number;
  data: Uint8Array;
  /** The call read more than was copied: bytes [pos + data.length, lostTo) are missing. */
  lostTo?: number | undefined;
  /**
   * The chunk is its connection's first read (it carries the client's SYN): a stream held for (pid, fd) is an
   * earlier connection's.
   */
  hasSyn?: boolean;
}

/** A ClientHello read from a raw TLS stream: the packet side's facts, and the socket that read it. */
export interface CapturedHello extends HelloOut {
  pid: number;
  fd: number;
}

/** Where the tracker delivers what it found, as it finds it (no result arrays per chunk). */
export interface RequestSink {
  /**
   * One HTTP request as its row, request-side fields filled (tuple as the kernel resolved it, pid, server,
   * capture, method, path, version, Host, User-Agent, JA4H forms, truncated); the correlator fills the rest.
   * `tls`: the request came from SSL_read plaintext. `conn`: the connection's tuple as the kernel resolved it,
   * with its map key (the correlator's lookup needs no key made from the row's text).
   */
  request(row: Row, fd: number, tsNs: number, tls: boolean, conn: ConnTuple): void;
  /** A ClientHello read from a raw TLS stream. */
  hello(h: CapturedHello): void;
}

export interface RequestTrackerStats {
  streams: number;
  requests: number;
  hellos: number;
  parse_errors: number;
  gaps: number;
  truncated: number;
  evicted_lru: number;
  evicted_idle: number;
  /** Streams evicted (least recently used first) because all streams together held more than maxBytes. */
  evicted_bytes: number;
  /** Bytes buffered by all streams (incomplete heads, out-of-order chunks). */
  bytes: number;
  /** Request heads whose header block was parsed before (parsed and fingerprinted once). */
  head_cache_hits: number;
  /** ClientHellos of raw TLS streams not parsed: the packet side had delivered the connection's (same bytes). */
  hellos_known: number;
}

type Proto = "unknown" | "http1" | "h2" | "tls" | "other";

/**
 * A stream's tuple with its connection key (src/capture/connkey.ts), made once per stream, and a slot the
 * sink may keep its own state of the connection in (the correlator does, for plain-HTTP connections): it
 * lives as long as the stream, and goes with it.
 */
export type ConnTuple = Tuple & { readonly connKey: ConnKey; facts: unknown };

/** A stream is its own tuple (the tuple's fields are the stream's: no tuple object per connection). */
interface Stream extends ConnTuple {
  key: number;
  asm: StreamAssembler;
  proto: Proto;
  h1?: Http1RequestStream;
  h2?: Http2RequestStream;
  /**
   * The last HTTP/2 request's fields as a header block, with what was derived from them (a browser repeats
   * them): the memo an HTTP/1 head's block is, without the text.
   */
  h2last: HeaderBlock | undefined;
  tls?: TlsHandshakeReader;
  sniff: Uint8Array;
  /** A gap or lost bytes hit the head being read: the next head out is marked truncated. */
  cut: boolean;
  lastNs: number;
  errorsSeen: number;
}

/** A JA4H computed with its `ja4h` form only (the others are never "" when computed). */
function lean(fp: Ja4h): boolean {
  return fp.ja4h_o === "";
}

/**
 * The same fields in the same order: HPACK hands out one pair object per table entry, so the fields a
 * connection repeats (indexed in its table) compare by identity, the rest by value.
 */
function sameFields(a: [string, string][], b: [string, string][]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i], y = b[i];
    if (x !== y && (x[0] !== y[0] || x[1] !== y[1])) return false;
  }
  return true;
}

/** (pid, fd, plaintext) as one number: pid < 2^22, fd < 2^21, so the key stays below 2^44 (exact). */
function streamKey(pid: number, fd: number, plaintext: boolean): number {
  return ((pid * 2097152) + (fd & 0x1fffff)) * 2 + (plaintext ? 1 : 0);
}

function header(h: [string, string][], name: string): string {
  for (const [n, v] of h) if (n.length === name.length && n.toLowerCase() === name) return v;
  return "";
}

/** Default budget for bytes buffered by all streams together (heads split across reads, reordering). */
export const DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export class RequestTracker {
  private readonly streams: LruMap<number, Stream>;
  private readonly fullJa4h: () => boolean;
  /** Header blocks seen before, shared by all HTTP/1 streams. */
  private readonly heads = new HeaderBlockCache();
  private readonly s: RequestTrackerStats = {
    streams: 0,
    requests: 0,
    hellos: 0,
    parse_errors: 0,
    gaps: 0,
    truncated: 0,
    evicted_lru: 0,
    evicted_idle: 0,
    evicted_bytes: 0,
    bytes: 0,
    head_cache_hits: 0,
    hellos_known: 0,
  };

  constructor(
    private readonly sink: RequestSink,
    private readonly opts: {
      maxStreams?: number;
      idleNs?: number;
      maxHead?: number;
      maxBytes?: number;
      /**
       * Whether the connection's ClientHello is already known (tc reported it before the server read it):
       * a raw stream's first hello is then not parsed again.
       */
      knownHello?: (key: ConnKey) => boolean;
      /**
       * Whether rows need JA4H's raw and original-order forms (privacy.ship_raw_ja4h, which a reload may
       * turn on): when not, only `ja4h` is computed (default: all four).
       */
      fullJa4h?: () => boolean;
      /**
       * A stream with something in its slot (`ConnTuple.facts`) went without its close: evicted, idle, or its
       * fd reused.
       */
      gone?: (facts: unknown) => void;
    } = {},
  ) {
    this.fullJa4h = opts.fullJa4h ?? (() => true);
    this.streams = new LruMap(
      opts.maxStreams ?? 65536,
      opts.maxBytes ?? DEFAULT_MAX_BUFFERED_BYTES,
      (_k, st, why) => {
        if (why === "count") this.s.evicted_lru++;
        else this.s.evicted_bytes++;
        this.#gone(st);
      },
    );
  }

  /** A stream went without its close: what the sink kept in its slot goes with it (the sink is told). */
  #gone(st: Stream): void {
    if (st.facts !== undefined) this.opts.gone?.(st.facts);
  }

  stats(): RequestTrackerStats {
    return {
      ...this.s,
      streams: this.streams.size,
      bytes: this.streams.bytes,
      head_cache_hits: this.heads.hits,
    };
  }

  /**
   * The connection (pid, fd) was closed: its stream state goes. Returns what the sink kept in its raw
   * stream's slot (`facts`), if anything. `raw` / `plaintext`: whether the kernel side read anything of that
   * stream (the close record's positions); a stream nothing was read of was never made here.
   */
  close(pid: number, fd: number, raw = true, plaintext = true): unknown {
    const facts = raw ? this.streams.take(streamKey(pid, fd, false))?.value.facts : undefined;
    if (plaintext) this.streams.delete(streamKey(pid, fd, true));
    return facts;
  }

  /** Drops streams idle for longer than idleNs (default 5 min) as of `nowNs`. */
  expire(nowNs: number): void {
    const idle = this.opts.idleNs ?? 300e9;
    // Least recently used first: stop at the first stream still in use.
    for (let n = this.streams.oldest(); n !== undefined; n = this.streams.oldest()) {
      if (nowNs - n.value.lastNs <= idle) break;
      this.streams.delete(n.key);
      this.s.evicted_idle++;
      this.#gone(n.value);
    }
  }

  push(c: PayloadChunk): void {
    const key = streamKey(c.pid, c.fd, c.plaintext);
    let node = this.streams.node(key); // most recently used now
    let st = node?.value;
    if (
      st &&
      (c.hasSyn === true || st.src_port !== c.src_port || st.src !== c.src ||
        c.pos < (st.asm.next ?? 0) - 65536)
    ) {
      // The fd was reused for another connection without a close event reaching us (a first read says so
      // even when the new connection has the old one's tuple).
      this.streams.delete(key);
      this.#gone(st);
      st = undefined;
    }
    if (!st) {
      st = {
        key,
        src: c.src,
        src_port: c.src_port,
        dst: c.dst,
        dst_port: c.dst_port,
        connKey: connKeyOf(c),
        asm: new StreamAssembler(),
        proto: "unknown",
        sniff: NOTHING,
        cut: false,
        lastNs: c.tsNs,
        errorsSeen: 0,
        h2last: undefined,
        facts: undefined,
      };
      node = this.streams.set(key, st);
    }
    st.lastNs = c.tsNs;
    if (st.asm.takeInOrder(c.pos, c.data.length)) this.feed(st, c, c.data);
    else {
      const r = st.asm.push(c.pos, c.data);
      if (r.gap) this.gap(st);
      for (const piece of r.out) this.feed(st, c, piece);
    }
    if (c.lostTo !== undefined && c.lostTo > c.pos + c.data.length) {
      // Bytes the kernel read but the capture limit did not copy: what is buffered is all we get of that head.
      this.s.truncated++;
      const lost = st.asm.markLost(c.pos + c.data.length, c.lostTo);
      if (lost) this.gap(st, c);
    }
    // What this stream holds now counts against the global budget (may evict idle streams' buffers).
    const held = st.asm.held + st.sniff.length + (st.h1 ? st.h1.buffered : 0) +
      (st.tls ? st.tls.buffered : 0);
    if (node !== undefined && node.bytes !== held && this.streams.peek(key) === st) {
      this.streams.resize(node, held);
    }
  }

  private gap(st: Stream, c?: PayloadChunk): void {
    this.s.gaps++;
    if (st.proto === "http1" && st.h1) {
      const partial = st.h1.takePartial();
      if (partial && c) this.request(st, c, partial, true);
      st.cut = false;
    } else if (st.proto === "h2") {
      // HPACK state cannot survive lost bytes: give up on this stream.
      st.proto = "other";
      st.h2 = undefined;
    }
  }

  private feed(st: Stream, c: PayloadChunk, bytes: Uint8Array): void {
    if (st.proto === "unknown") {
      let s = bytes;
      if (st.sniff.length !== 0) {
        s = new Uint8Array(st.sniff.length + bytes.length);
        s.set(st.sniff);
        s.set(bytes, st.sniff.length);
      }
      if (s.length < 4) {
        st.sniff = s === bytes ? bytes.slice() : s; // the caller's buffer is reused after this call
        return;
      }
      st.sniff = NOTHING;
      bytes = s;
      if (s[0] === 0x16 && s[1] === 0x03) {
        st.proto = "tls";
        st.tls = new TlsHandshakeReader();
      } else if (s[0] === 0x50 && s[1] === 0x52 && s[2] === 0x49 && s[3] === 0x20) {
        // "PRI ": compared as bytes (a TextDecoder call per connection was ~4 % of the agent's CPU).
        st.proto = "h2";
        st.h2 = new Http2RequestStream();
      } else {
        st.proto = "http1";
        st.h1 = new Http1RequestStream({ maxHead: this.opts.maxHead, cache: this.heads });
      }
    }
    if (st.proto === "http1") {
      const h1 = st.h1!;
      const heads = h1.push(bytes);
      for (let i = 0; i < heads.length; i++) this.request(st, c, heads[i], false);
      const errs = h1.errors.malformed + h1.errors.oversize + h1.errors.truncated + h1.errors.unsupported;
      this.s.parse_errors += errs - st.errorsSeen;
      st.errorsSeen = errs;
    } else if (st.proto === "h2") {
      const h2 = st.h2!;
      // The HTTP/2 stream copies what it keeps past the call (the caller's bytes are a view into the ring).
      for (const r of h2.push(bytes)) {
        const method = r.method ?? "";
        let b = st.h2last;
        if (b === undefined || !sameFields(b.headers, r.headers)) {
          st.h2last = b = newHeaderBlock(r.headers, 0, "");
        }
        const fp = this.fromBlock(b, method, "20");
        this.s.requests++;
        this.sink.request(
          requestRow(st, c, method, r.path ?? "", "20", r.authority ?? b.host!, b.ua!, fp, false),
          c.fd,
          c.tsNs,
          c.plaintext,
          st,
        );
      }
      if (h2.dropped) {
        this.s.parse_errors++;
        st.proto = "other";
        st.h2 = undefined;
      }
    } else if (st.proto === "tls") {
      const tls = st.tls!;
      tls.push(bytes);
      for (;;) {
        const m = tls.next();
        if (!m.ok) {
          if (!m.needMore) this.s.parse_errors++;
          break;
        }
        if (m.value.type !== HS_CLIENT_HELLO) continue;
        this.clientHello(st, c, m.value.body, tls.messages === 1);
      }
      if (tls.encrypted || tls.failed) {
        st.proto = "other";
        st.tls = undefined;
      } else tls.ownBuffered(); // a record in pieces is kept: copy it out of the caller's bytes
    }
  }

  /**
   * A ClientHello of a raw TLS stream, parsed and handed to the sink; the stream's first one is skipped when
   * tc already delivered it (the same bytes). A second one (after a HelloRetryRequest) is fingerprinted too.
   */
  private clientHello(st: Stream, c: PayloadChunk, body: Uint8Array, first: boolean): void {
    if (first && this.opts.knownHello?.(st.connKey)) {
      this.s.hellos_known++;
      return;
    }
    const ch = parseClientHello(body);
    if (!ch.ok) {
      this.s.parse_errors++;
      return;
    }
    this.s.hellos++;
    const t: ConnTuple = st;
    this.sink.hello({
      src: t.src,
      src_port: t.src_port,
      dst: t.dst,
      dst_port: t.dst_port,
      connKey: t.connKey,
      tsNs: c.tsNs,
      pid: c.pid,
      fd: c.fd,
      hello: ch.value,
      fp: ja4(ch.value),
    });
  }

  /**
   * The JA4H of a head with header block `b` (its Host and User-Agent filled in `b` on first use), computed
   * once per block and (method, version): the last one in fields, others in `derived` (a GET then a POST).
   * `cookie`: the head's Cookie value when the block holds it blanked (see HttpRequestHead.cookie).
   */
  private fromBlock(b: HeaderBlock, method: string, version: string, cookie?: string): Ja4h {
    if (b.host === undefined) {
      b.host = header(b.headers, "host");
      b.ua = header(b.headers, "user-agent");
    }
    const full = this.fullJa4h();
    let f: Ja4h | undefined;
    if (method === b.lastMethod && version === b.lastVersion && !(full && lean(b.last as Ja4h))) {
      f = b.last as Ja4h;
    } else {
      const k = method + " " + version;
      f = b.derived?.get(k) as Ja4h | undefined;
      if (f === undefined || (full && lean(f))) {
        f = ja4h({ method, version, headers: b.headers }, full);
        (b.derived ??= new Map()).set(k, f);
      }
      b.lastMethod = method;
      b.lastVersion = version;
      b.last = f;
    }
    return cookie === undefined ? f : this.withCookie(b, f, method, version, cookie, full);
  }

  /**
   * A head of a block keyed without its Cookie value: the block's a and b parts with the head's own c and d
   * (the block's last Cookie value and result kept: a keep-alive client repeats its cookie).
   */
  private withCookie(
    b: HeaderBlock,
    base: Ja4h,
    method: string,
    version: string,
    cookie: string,
    full: boolean,
  ): Ja4h {
    if (cookie === b.lastCookie && base === b.lastCookieBase) return b.lastCookieFp as Ja4h;
    const fp: Ja4h = full ? ja4h({ method, version, headers: b.headers, cookie }, true) : {
      ja4h: ja4hWithCookie(base.ja4h.slice(0, JA4H_AB + 1), cookie),
      ja4h_r: "",
      ja4h_o: "",
      ja4h_ro: "",
    };
    b.lastCookie = cookie;
    b.lastCookieBase = base;
    b.lastCookieFp = fp;
    return fp;
  }

  private request(st: Stream, c: PayloadChunk, head: RequestHead, truncated: boolean): void {
    this.s.requests++;
    let host: string, ua: string, fp: Ja4h;
    const b = head.block;
    if (b !== undefined) {
      // A header block seen before: Host, User-Agent and the JA4H (per method and version) come from it.
      fp = this.fromBlock(b, head.method, head.version, head.cookie);
      host = b.host!;
      ua = b.ua!;
    } else {
      host = header(head.headers, "host");
      ua = header(head.headers, "user-agent");
      fp = ja4h(head, this.fullJa4h());
    }
    this.sink.request(
      requestRow(st, c, head.method, head.target, head.version, host, ua, fp, truncated),
      c.fd,
      c.tsNs,
      c.plaintext,
      st,
    );
  }
}

const NOTHING = new Uint8Array(0);

/** A request's row with the request-side fields; the correlator fills ts, host and the connection's facts. */
function requestRow(
  t: Tuple,
  c: PayloadChunk,
  method: string,
  path: string,
  version: string,
  host: string,
  ua: string,
  fp: Ja4h,
  truncated: boolean,
): Row {
  // One literal in ROW_FIELDS order: every row has the same shape from its first allocation.
  return {
    ts: "",
    host: "",
    server: c.server,
    pid: c.pid,
    capture: c.capture,
    src: t.src,
    src_port: t.src_port,
    dst: t.dst,
    dst_port: t.dst_port,
    method,
    path,
    http_version: version,
    host_header: host,
    user_agent: ua,
    ja4h: fp.ja4h,
    ja4h_r: fp.ja4h_r,
    ja4h_o: fp.ja4h_o,
    ja4h_ro: fp.ja4h_ro,
    ja4: "",
    ja4_r: "",
    ja4t: "",
    tls_server_name: "",
    truncated,
  };
}
