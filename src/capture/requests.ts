/**
 * Request side of the capture: turns payload chunks read by the servers (recvfrom, apr_socket_recv,
 * SSL_read plaintext) into HTTP requests with their JA4H.
 *
 * One stream per (pid, fd, stream kind). Chunks are put in order by byte position, the protocol is chosen
 * from the first bytes (HTTP/1.x, the HTTP/2 preface, or TLS records — ciphertext, from which only the
 * ClientHello is taken), and each completed request head becomes a `CapturedRequest`. State is bounded:
 * least recently used streams are evicted past `maxStreams`, idle ones after `idleMs`, each counted.
 */
import { StreamAssembler } from "./assembler.ts";
import { LruMap } from "./lru.ts";
import { Http1RequestStream, type RequestHead } from "../parse/http1.ts";
import { H2_PREFACE, Http2RequestStream } from "../parse/http2.ts";
import { HS_CLIENT_HELLO, parseClientHello, TlsHandshakeReader } from "../parse/tls.ts";
import { type Ja4h, ja4h } from "../fingerprint/ja4h.ts";
import { type Ja4, ja4 } from "../fingerprint/ja4.ts";
import type { ClientHello } from "../parse/tls.ts";

export interface Tuple {
  /** Client address and port (the socket's peer). */
  src: string;
  src_port: number;
  /** Server address and port (the socket's local side). */
  dst: string;
  dst_port: number;
}

/** One chunk of bytes a server process read from a client socket. */
export interface PayloadChunk extends Tuple {
  pid: number;
  fd: number;
  /** Monotonic nanoseconds (bpf_ktime_get_ns). */
  tsNs: bigint;
  server: string;
  /** Capture method that produced the chunk (tracepoint, kretprobe, uprobe, …). */
  capture: string;
  /** Plaintext from SSL_read rather than the raw socket stream. */
  plaintext: boolean;
  /** Byte position of `data` in the connection's stream. */
  pos: number;
  data: Uint8Array;
  /** The call read more than was copied: bytes [pos + data.length, lostTo) are missing. */
  lostTo?: number;
}

export interface CapturedRequest extends Tuple {
  tsNs: bigint;
  pid: number;
  fd: number;
  server: string;
  capture: string;
  method: string;
  path: string;
  http_version: string;
  host_header: string;
  user_agent: string;
  fp: Ja4h;
  /** The head was cut by the capture limit (or a lost chunk): header-derived fields may be incomplete. */
  truncated: boolean;
  /** "tls" when the request came from SSL_read plaintext. */
  tls: boolean;
}

export interface CapturedHello extends Tuple {
  tsNs: bigint;
  pid: number;
  fd: number;
  hello: ClientHello;
  fp: Ja4;
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
}

type Proto = "unknown" | "http1" | "h2" | "tls" | "other";

interface Stream {
  key: string;
  tuple: Tuple;
  asm: StreamAssembler;
  proto: Proto;
  h1?: Http1RequestStream;
  h2?: Http2RequestStream;
  tls?: TlsHandshakeReader;
  sniff: Uint8Array;
  /** A gap or lost bytes hit the head being read: the next head out is marked truncated. */
  cut: boolean;
  lastNs: bigint;
  errorsSeen: number;
}

const decoder = new TextDecoder();
const PRI = decoder.decode(H2_PREFACE.subarray(0, 4)); // "PRI "

function header(h: [string, string][], name: string): string {
  for (const [n, v] of h) if (n.length === name.length && n.toLowerCase() === name) return v;
  return "";
}

/** Default budget for bytes buffered by all streams together (heads split across reads, reordering). */
export const DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export class RequestTracker {
  private readonly streams: LruMap<string, Stream>;
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
  };

  constructor(
    private readonly opts: { maxStreams?: number; idleNs?: bigint; maxHead?: number; maxBytes?: number } = {},
  ) {
    this.streams = new LruMap(
      opts.maxStreams ?? 65536,
      opts.maxBytes ?? DEFAULT_MAX_BUFFERED_BYTES,
      (_k, _st, why) => why === "count" ? this.s.evicted_lru++ : this.s.evicted_bytes++,
    );
  }

  stats(): RequestTrackerStats {
    return { ...this.s, streams: this.streams.size, bytes: this.streams.bytes };
  }

  /** The connection (pid, fd) was closed: its stream state goes. */
  close(pid: number, fd: number): void {
    this.streams.delete(`${pid}:${fd}:0`);
    this.streams.delete(`${pid}:${fd}:1`);
  }

  /** Drops streams idle for longer than idleNs (default 5 min) as of `nowNs`. */
  expire(nowNs: bigint): void {
    const idle = this.opts.idleNs ?? 300_000_000_000n;
    // Least recently used first: stop at the first stream still in use.
    for (let n = this.streams.oldest(); n !== undefined; n = this.streams.oldest()) {
      if (nowNs - n.value.lastNs <= idle) break;
      this.streams.delete(n.key);
      this.s.evicted_idle++;
    }
  }

  push(c: PayloadChunk): { requests: CapturedRequest[]; hellos: CapturedHello[] } {
    const requests: CapturedRequest[] = [];
    const hellos: CapturedHello[] = [];
    const key = `${c.pid}:${c.fd}:${c.plaintext ? 1 : 0}`;
    const node = this.streams.node(key); // most recently used now
    let st = node?.value;
    if (
      st && (st.tuple.src_port !== c.src_port || st.tuple.src !== c.src || c.pos < (st.asm.next ?? 0) - 65536)
    ) {
      // The fd was reused for another connection without a close event reaching us.
      this.streams.delete(key);
      st = undefined;
    }
    if (!st) {
      st = {
        key,
        tuple: { src: c.src, src_port: c.src_port, dst: c.dst, dst_port: c.dst_port },
        asm: new StreamAssembler(),
        proto: "unknown",
        sniff: new Uint8Array(0),
        cut: false,
        lastNs: c.tsNs,
        errorsSeen: 0,
      };
      this.streams.set(key, st);
    }
    st.lastNs = c.tsNs;
    const r = st.asm.push(c.pos, c.data);
    if (r.gap) this.gap(st);
    for (const piece of r.out) this.feed(st, c, piece, requests, hellos);
    if (c.lostTo !== undefined && c.lostTo > c.pos + c.data.length) {
      // Bytes the kernel read but the capture limit did not copy: what is buffered is all we get of that head.
      this.s.truncated++;
      const lost = st.asm.markLost(c.pos + c.data.length, c.lostTo);
      if (lost) this.gap(st, c, requests);
    }
    // What this stream holds now counts against the global budget (may evict idle streams' buffers).
    const held = st.asm.held + st.sniff.length + (st.h1 ? st.h1.buffered : 0) +
      (st.tls ? st.tls.buffered : 0);
    const n = this.streams.node(key);
    if (n !== undefined && n.bytes !== held) this.streams.resize(n, held);
    return { requests, hellos };
  }

  private gap(st: Stream, c?: PayloadChunk, out?: CapturedRequest[]): void {
    this.s.gaps++;
    if (st.proto === "http1" && st.h1) {
      const partial = st.h1.takePartial();
      if (partial && c && out) out.push(this.request(st, c, partial, true));
      st.cut = false;
    } else if (st.proto === "h2") {
      // HPACK state cannot survive lost bytes: give up on this stream.
      st.proto = "other";
      st.h2 = undefined;
    }
  }

  private feed(
    st: Stream,
    c: PayloadChunk,
    bytes: Uint8Array,
    requests: CapturedRequest[],
    hellos: CapturedHello[],
  ): void {
    if (st.proto === "unknown") {
      const s = new Uint8Array(st.sniff.length + bytes.length);
      s.set(st.sniff);
      s.set(bytes, st.sniff.length);
      if (s.length < 4) {
        st.sniff = s;
        return;
      }
      st.sniff = new Uint8Array(0);
      bytes = s;
      if (s[0] === 0x16 && s[1] === 0x03) {
        st.proto = "tls";
        st.tls = new TlsHandshakeReader();
      } else if (decoder.decode(s.subarray(0, 4)) === PRI) {
        st.proto = "h2";
        st.h2 = new Http2RequestStream();
      } else {
        st.proto = "http1";
        st.h1 = new Http1RequestStream({ maxHead: this.opts.maxHead });
      }
    }
    if (st.proto === "http1") {
      const h1 = st.h1!;
      for (const head of h1.push(bytes)) requests.push(this.request(st, c, head, false));
      const errs = h1.errors.malformed + h1.errors.oversize + h1.errors.truncated + h1.errors.unsupported;
      this.s.parse_errors += errs - st.errorsSeen;
      st.errorsSeen = errs;
    } else if (st.proto === "h2") {
      const h2 = st.h2!;
      for (const r of h2.push(bytes)) {
        const fp = ja4h({ method: r.method ?? "", version: "20", headers: r.headers });
        this.s.requests++;
        requests.push({
          ...st.tuple,
          tsNs: c.tsNs,
          pid: c.pid,
          fd: c.fd,
          server: c.server,
          capture: c.capture,
          method: r.method ?? "",
          path: r.path ?? "",
          http_version: "20",
          host_header: r.authority ?? header(r.headers, "host"),
          user_agent: header(r.headers, "user-agent"),
          fp,
          truncated: false,
          tls: c.plaintext,
        });
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
        const ch = parseClientHello(m.value.body);
        if (!ch.ok) {
          this.s.parse_errors++;
          continue;
        }
        this.s.hellos++;
        hellos.push({ ...st.tuple, tsNs: c.tsNs, pid: c.pid, fd: c.fd, hello: ch.value, fp: ja4(ch.value) });
        // Only the first hello matters (a second one follows a HelloRetryRequest and is fingerprinted too).
      }
      if (tls.encrypted || tls.failed) {
        st.proto = "other";
        st.tls = undefined;
      }
    }
  }

  private request(st: Stream, c: PayloadChunk, head: RequestHead, truncated: boolean): CapturedRequest {
    this.s.requests++;
    return {
      ...st.tuple,
      tsNs: c.tsNs,
      pid: c.pid,
      fd: c.fd,
      server: c.server,
      capture: c.capture,
      method: head.method,
      path: head.target,
      http_version: head.version,
      host_header: header(head.headers, "host"),
      user_agent: header(head.headers, "user-agent"),
      fp: ja4h(head),
      truncated,
      tls: c.plaintext,
    };
  }
}
