/**
 * Capture file → one record per TCP stream with its JA4+ fingerprints (the offline `fingerprint --pcap` mode).
 * Field names and stream numbers follow FoxIO's Rust `ja4` tool (which numbers streams like Wireshark).
 *
 * Each direction of a connection is sniffed on its own: TLS handshake records (ClientHello → JA4, ServerHello
 * → JA4S), HTTP/1 requests (JA4H, every request of a keep-alive or pipelined connection), and the two tunnels
 * FoxIO's vectors put in front of TLS: an HTTP CONNECT and a SOCKS 4/5 negotiation. Anything else stops
 * that direction's reassembly at once. The side that sends a ClientHello or a request is the client when no
 * SYN or SYN-ACK told us (captures that start mid-connection).
 *
 * With TLS secrets (an NSS key log, or pcapng Decryption Secrets Blocks as they are read), each TLS
 * connection is also decrypted: both directions go through a TlsDecryptor until the server's first
 * application data (the handshake is then over and responses are not needed), the client's plaintext goes to
 * the HTTP/2 parser (ALPN h2 or the connection preface) or the HTTP/1 parser, and its requests become
 * `http` entries like those of plain streams. Decryption and parsing stream (only a record, a frame or a
 * request head is ever buffered), so the client direction's reassembly cap is raised for decrypted streams.
 */
import { type CapturedPacket, type CaptureReader, tsMicros } from "../parse/pcap.ts";
import { decodePacket, type TcpSegment } from "../parse/packet.ts";
import {
  DEFAULT_LIMITS,
  type ReassemblyLimits,
  type TcpConnection,
  TcpConnectionTable,
  type TcpDirection,
} from "../capture/tcp_reassembly.ts";
import {
  type ClientHello,
  HS_CLIENT_HELLO,
  HS_SERVER_HELLO,
  parseClientHello,
  parseServerHello,
  type ServerHello,
  TlsHandshakeReader,
} from "../parse/tls.ts";
import { Http1RequestStream, parseRequestHead, type RequestHead } from "../parse/http1.ts";
import { H2_PREFACE, type H2Request, Http2RequestStream } from "../parse/http2.ts";
import {
  keyLogFromDecryptionSecrets,
  TlsDecryptor,
  type TlsDir,
  type TlsKeyLog,
} from "../parse/tls_decrypt.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { ja4s } from "../fingerprint/ja4s.ts";
import { ja4h } from "../fingerprint/ja4h.ts";
import { type AbsentConvention, ja4t, ja4ts } from "../fingerprint/ja4t.ts";
import { ja4lClient, ja4lServer } from "../fingerprint/ja4l.ts";
import type { ErrorCounts } from "../parse/errors.ts";

export interface HttpRecord {
  ja4h: string;
  ja4h_r?: string;
  ja4h_o?: string;
  ja4h_ro?: string;
  method: string;
  path: string;
}

/** One TCP stream; absent fields are omitted, as in the Rust tool's output. */
export interface StreamRecord {
  stream: number;
  transport: "tcp";
  src: string;
  dst: string;
  src_port: number;
  dst_port: number;
  tls_server_name?: string;
  ja4?: string;
  ja4_r?: string;
  ja4_o?: string;
  ja4_ro?: string;
  ja4s?: string;
  ja4s_r?: string;
  ja4t?: string;
  ja4ts?: string;
  ja4l_c?: string;
  ja4l_s?: string;
  http?: HttpRecord[];
}

export interface OfflineOptions {
  /** Add the raw and original-order forms (ja4_r, ja4_o, ja4_ro, ja4s_r, ja4h_r, ja4h_o, ja4h_ro). Off by
   * default: ja4h_r/ja4h_ro carry cookie values in the clear. */
  withRaw?: boolean;
  /** JA4T/JA4TS rendering of absent options/MSS/window scale (spec §4.3). Default "foxio" (`00`). */
  ja4tAbsent?: AbsentConvention;
  limits?: ReassemblyLimits;
  /** Called with each TCP frame's stream number (tests compare the numbering with Wireshark's). */
  onSegment?: (frame: number, stream: number) => void;
  /**
   * TLS secrets (NSS key log). With it, or once the capture yields a Decryption Secrets Block (see
   * addDecryptionSecrets), TLS streams are decrypted and their HTTP/1.1 and HTTP/2 requests fingerprinted.
   */
  keyLog?: TlsKeyLog;
  /**
   * Client bytes a decrypted TLS stream may deliver (replaces `limits.maxStreamBytes` for that direction).
   * Default 1 GiB: decryption keeps no more than a record and the parsers skip bodies, so requests late in a
   * long HTTP/2 connection are still seen at no memory cost.
   */
  maxDecryptedStreamBytes?: number;
  /**
   * Receives records as soon as they are final, in stream order (a stream still open holds back the higher
   * numbers). Without it, finish() returns them all.
   */
  emit?: (r: StreamRecord) => void;
}

export interface OfflineStats {
  packets: number;
  tcpPackets: number;
  /** Frames that are not TCP (or not IP), by reason. */
  skipped: Record<string, number>;
  /** Frames that could not be decoded, by reason. */
  malformed: Record<string, number>;
  streams: number;
  /** Streams written (those with at least one fingerprint). */
  records: number;
  tlsErrors: number;
  httpErrors: number;
  /** Holes in a direction's byte stream that were never filled (lost packets). */
  gaps: number;
  /** TLS streams whose client application data was decrypted (at least one byte). */
  decrypted: number;
  /**
   * TLS streams that secrets were available for (a key log given or a Decryption Secrets Block read) but
   * that yielded no client plaintext: they keep their JA4/JA4S but have no `http` entries.
   */
  undecryptable: number;
  /** `undecryptable` by reason: no-keys, auth-failed, unsupported-suite, malformed, oversize, gap,
   * no-client-hello. A decrypted stream that stops later is counted in tlsErrors instead. */
  undecryptableBy: Record<string, number>;
  warnings: string[];
}

/** Sniffing/parsing state of one direction of one connection. */
type Mode =
  | { kind: "sniff" }
  | { kind: "tls"; reader: TlsHandshakeReader; helloDone: boolean }
  | { kind: "http"; first: boolean; stream?: Http1RequestStream }
  | { kind: "http-response" }
  | { kind: "socks-client"; version: 4 | 5; step: number }
  | { kind: "socks-server"; version: 4 | 5; step: number };

interface Side {
  mode: Mode;
  /** Bytes not yet consumed by sniff/socks/CONNECT handling (small: capped by SNIFF_CAP). */
  buf: Uint8Array;
  dir: TcpDirection;
  isA: boolean;
}

interface ConnState {
  a: Side;
  b: Side;
  clientHello?: ClientHello;
  serverHello?: ServerHello;
  /** Which side sent the ClientHello / the first request (true = A). */
  clientSideA?: boolean;
  http: HttpRecord[];
  /** The client asked for a tunnel (CONNECT or SOCKS): the server's reply head is skipped, then sniffed. */
  connectSeen: boolean;
  socks?: 4 | 5;
  tlsDec?: DecryptState;
}

/** Decryption of one TLS connection. */
interface DecryptState {
  /** Created once the ClientHello tells which side is the client. */
  dec: TlsDecryptor | null;
  /** TLS bytes of each side (A, B) held until then. */
  held: [Uint8Array[], Uint8Array[]];
  heldBytes: number;
  app?: { kind: "h2"; s: Http2RequestStream } | { kind: "h1"; s: Http1RequestStream };
  /** Client plaintext read before the protocol is known (shorter than the HTTP/2 preface). */
  pre: Uint8Array;
  plaintext: number;
  /** Why decryption ended early, once it has. */
  ended?: string;
}

/** Bytes a sniffing/tunnel state may hold before giving up on a direction. */
const SNIFF_CAP = 8192;
/** TLS bytes held per connection while waiting for the ClientHello (a hello is a few KB). */
const HOLD_CAP = 256 * 1024;
const DEFAULT_DECRYPTED_STREAM_BYTES = 1 << 30;
/** Key-log labels that mean "secrets for this session" (TLS 1.2 master secret, TLS 1.3 traffic secrets). */
const SESSION_LABELS = ["CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"];
const EMPTY = new Uint8Array(0);
const WIRESHARK_SOCKS_PORT = 1080;
const td = new TextDecoder();

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function looksLikeRequest(b: Uint8Array): boolean {
  let i = 0;
  while (i < b.length && i < 24 && ((b[i] >= 0x41 && b[i] <= 0x5a) || b[i] === 0x2d || b[i] === 0x5f)) i++;
  return i >= 3 && i < b.length && b[i] === 0x20;
}

function startsWith(b: Uint8Array, s: string): boolean {
  if (b.length < s.length) return false;
  for (let i = 0; i < s.length; i++) if (b[i] !== s.charCodeAt(i)) return false;
  return true;
}

/** Offset after an HTTP head's empty line, or -1. */
function headEnd(b: Uint8Array): number {
  for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, i + 1)) {
    if (b[i + 1] === 0x0a) return i + 2;
    if (b[i + 1] === 0x0d && b[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}

/** Length of a SOCKS5 address (atyp + address + port) at b[o], or -1 if incomplete/unknown. */
function socks5AddrLen(b: Uint8Array, o: number): number {
  if (b.length <= o) return -1;
  const t = b[o];
  if (t === 1) return 1 + 4 + 2;
  if (t === 4) return 1 + 16 + 2;
  if (t === 3) return b.length > o + 1 ? 1 + 1 + b[o + 1] + 2 : -1;
  return -2;
}

export class OfflineFingerprinter {
  readonly stats: OfflineStats = {
    packets: 0,
    tcpPackets: 0,
    skipped: {},
    malformed: {},
    streams: 0,
    records: 0,
    tlsErrors: 0,
    httpErrors: 0,
    gaps: 0,
    decrypted: 0,
    undecryptable: 0,
    undecryptableBy: {},
    warnings: [],
  };
  private table: TcpConnectionTable;
  /** Finished streams waiting for a lower-numbered one (null: nothing to print for that number). */
  private ready = new Map<number, StreamRecord | null>();
  private nextOut = 0;
  private readonly emit: OfflineOptions["emit"];
  private lastEvict = 0;
  private readonly withRaw: boolean;
  private readonly absent: AbsentConvention;
  private readonly onSegment: OfflineOptions["onSegment"];
  /** Secrets in effect; null: TLS streams are not decrypted. */
  private keyLog: TlsKeyLog | null;
  private readonly maxDecrypted: number;

  constructor(opts: OfflineOptions = {}) {
    this.keyLog = opts.keyLog ?? null;
    this.maxDecrypted = opts.maxDecryptedStreamBytes ?? DEFAULT_DECRYPTED_STREAM_BYTES;
    this.withRaw = opts.withRaw ?? false;
    this.absent = opts.ja4tAbsent ?? "foxio";
    this.onSegment = opts.onSegment;
    this.emit = opts.emit;
    this.table = new TcpConnectionTable(opts.limits ?? DEFAULT_LIMITS);
    this.table.onOpen = (c) => this.open(c);
    this.table.onClose = (c) => this.close(c);
  }

  /**
   * Adds the secrets of a pcapng Decryption Secrets Block; TLS connections whose ClientHello comes later can
   * be decrypted. Returns false for a secrets type other than a TLS key log.
   */
  addDecryptionSecrets(secretsType: number, data: Uint8Array): boolean {
    const kl = keyLogFromDecryptionSecrets(secretsType, data);
    if (!kl) return false;
    if (this.keyLog) this.keyLog.merge(kl);
    else this.keyLog = kl;
    return true;
  }

  /** Processes one captured frame. Never throws on bad bytes: they are counted. */
  packet(p: CapturedPacket): void {
    this.stats.packets++;
    const r = decodePacket(p.linkType, p.data);
    if (!r.ok) {
      const bucket = r.error.code === "unsupported" ? this.stats.skipped : this.stats.malformed;
      const key = r.error.code === "unsupported" ? r.error.message : `${r.error.code}: ${r.error.message}`;
      bucket[key] = (bucket[key] ?? 0) + 1;
      return;
    }
    this.stats.tcpPackets++;
    const ts = tsMicros(p);
    this.segment(r.value, ts, p.frame);
    // Bounded state on long captures: sweep closed/idle connections every 30 s of capture time.
    if (ts - this.lastEvict > 30e6) {
      if (this.lastEvict !== 0) this.table.evict(ts);
      this.lastEvict = ts;
    }
  }

  private segment(seg: TcpSegment, ts: number, frame: number): void {
    const c = this.table.handle(seg, ts, frame);
    this.onSegment?.(frame, c.stream);
  }

  /** Ends the input; returns the records not handed to `emit` (all of them without it), by stream number. */
  finish(): StreamRecord[] {
    this.table.finish();
    const rest = [...this.ready.values()].filter((r): r is StreamRecord => r !== null);
    this.ready.clear();
    rest.sort((x, y) => x.stream - y.stream);
    if (this.emit) {
      for (const r of rest) this.emit(r);
      return [];
    }
    return rest;
  }

  private done(stream: number, rec: StreamRecord | null): void {
    if (rec) this.stats.records++;
    this.ready.set(stream, rec);
    if (!this.emit) return;
    while (this.ready.has(this.nextOut)) {
      const r = this.ready.get(this.nextOut)!;
      this.ready.delete(this.nextOut++);
      if (r) this.emit(r);
    }
  }

  private open(c: TcpConnection): void {
    this.stats.streams++;
    const st: ConnState = {
      a: { mode: { kind: "sniff" }, buf: new Uint8Array(0), dir: c.fromA, isA: true },
      b: { mode: { kind: "sniff" }, buf: new Uint8Array(0), dir: c.fromB, isA: false },
      http: [],
      connectSeen: false,
    };
    c.user = st;
    for (const side of [st.a, st.b]) {
      side.dir.onData = (bytes) => this.data(c, st, side, bytes);
      side.dir.onGap = () => {
        this.stats.gaps++;
        // Parsing across a hole would misread bytes; HTTP resynchronises on its own, everything else stops.
        if (side.mode.kind !== "http") this.detach(side);
        // TLS records can't be found again after a hole.
        if (side.mode.kind === "tls") this.decryptEnd(st, "gap");
      };
    }
  }

  private detach(side: Side): void {
    side.dir.onData = null;
    side.dir.onGap = null;
    side.buf = new Uint8Array(0);
  }

  private other(st: ConnState, side: Side): Side {
    return side === st.a ? st.b : st.a;
  }

  private data(c: TcpConnection, st: ConnState, side: Side, bytes: Uint8Array): void {
    // Loop because a tunnel handshake hands its leftover bytes to the next mode.
    let input = bytes;
    for (let guard = 0; guard < 8 && side.dir.onData !== null; guard++) {
      const m = side.mode;
      if (m.kind === "tls") return this.tls(c, st, side, m, input);
      if (m.kind === "http") return this.http(c, st, side, m, input);
      const b = concat(side.buf, input);
      input = new Uint8Array(0);
      side.buf = b;
      if (b.length === 0) return;
      if (m.kind === "sniff") {
        if (b[0] === 0x16 && (b.length < 2 || b[1] === 0x03)) {
          if (b.length < 2) return;
          side.mode = { kind: "tls", reader: new TlsHandshakeReader(), helloDone: false };
        } else if (startsWith(b, "HTTP/")) {
          if (!st.connectSeen) return this.detach(side); // plain responses carry nothing we fingerprint
          side.mode = { kind: "http-response" };
        } else if (looksLikeRequest(b)) {
          side.mode = { kind: "http", first: true };
        } else if ((b[0] === 4 || b[0] === 5) && st.socks === undefined && b.length >= 2 && b[1] !== 0) {
          st.socks = b[0] as 4 | 5;
          side.mode = { kind: "socks-client", version: b[0] as 4 | 5, step: 0 };
        } else if (st.socks !== undefined && (b[0] === 0 || b[0] === 5)) {
          side.mode = { kind: "socks-server", version: st.socks, step: 0 };
        } else if (b.length < 8 && /^[A-Z]+$/.test(td.decode(b))) {
          return; // the start of a request line or of "HTTP/" split over tiny segments: wait
        } else {
          return this.detach(side); // not a protocol we fingerprint
        }
        input = side.buf;
        side.buf = new Uint8Array(0);
        continue;
      }
      if (m.kind === "http-response") {
        const e = headEnd(b);
        if (e < 0) {
          if (b.length > SNIFF_CAP) this.detach(side);
          return;
        }
        side.mode = { kind: "sniff" };
        input = b.subarray(e);
        side.buf = new Uint8Array(0);
        continue;
      }
      // SOCKS: consume the negotiation, then sniff what is tunnelled.
      const used = m.kind === "socks-client" ? this.socksClient(m, b) : this.socksServer(c, m, b);
      if (used === -2) return this.detach(side);
      if (used < 0) {
        if (b.length > SNIFF_CAP) this.detach(side);
        return;
      }
      side.buf = new Uint8Array(0);
      input = b.subarray(used);
      if (m.step < 0) side.mode = { kind: "sniff" };
      if (input.length === 0) return;
    }
  }

  /** Consumes SOCKS client messages from b; returns bytes used (-1 need more, -2 not SOCKS). step<0 = done. */
  private socksClient(m: { version: 4 | 5; step: number }, b: Uint8Array): number {
    let p = 0;
    if (m.version === 4) {
      // VER CMD PORT(2) IP(4) USERID NUL [DOMAIN NUL for 4a]
      if (b.length < 9) return -1;
      let z = b.indexOf(0, 8);
      if (z < 0) return -1;
      if (b[4] === 0 && b[5] === 0 && b[6] === 0 && b[7] !== 0) {
        z = b.indexOf(0, z + 1);
        if (z < 0) return -1;
      }
      m.step = -1;
      return z + 1;
    }
    for (;;) {
      if (m.step === 0) { // greeting: VER NMETHODS METHODS
        if (b.length - p < 2 || b.length - p < 2 + b[p + 1]) return -1;
        p += 2 + b[p + 1];
        m.step = 1;
      } else if (m.step === 1) {
        if (b.length - p < 1) return p;
        if (b[p] === 1) { // username/password sub-negotiation
          if (b.length - p < 2) return -1;
          const ul = b[p + 1];
          if (b.length - p < 3 + ul) return -1;
          const pl = b[p + 2 + ul];
          if (b.length - p < 3 + ul + pl) return -1;
          p += 3 + ul + pl;
        }
        m.step = 2;
      } else {
        if (b.length - p < 4) return p > 0 ? p : -1;
        if (b[p] !== 5) return -2;
        const al = socks5AddrLen(b, p + 3);
        if (al === -2) return -2;
        if (al < 0 || b.length - p < 3 + al) return p > 0 ? p : -1;
        m.step = -1;
        return p + 3 + al;
      }
    }
  }

  private socksServer(c: TcpConnection, m: { version: 4 | 5; step: number }, b: Uint8Array): number {
    let p = 0;
    if (m.version === 4) {
      if (b.length < 8) return -1;
      if (b[1] === 0x5a) this.socksTunnel(c);
      m.step = -1;
      return 8;
    }
    for (;;) {
      if (m.step === 0) { // method choice
        if (b.length < 2) return -1;
        p = 2;
        m.step = b[1] === 2 ? 1 : 2;
      } else if (m.step === 1) { // auth status
        if (b.length - p < 2) return p > 0 ? p : -1;
        p += 2;
        m.step = 2;
      } else {
        if (b.length - p < 4) return p > 0 ? p : -1;
        const al = socks5AddrLen(b, p + 3);
        if (al === -2) return -2;
        if (al < 0 || b.length - p < 3 + al) return p > 0 ? p : -1;
        if (b[p + 1] === 0) this.socksTunnel(c);
        m.step = -1;
        return p + 3 + al;
      }
    }
  }

  /** Wireshark's SOCKS dissector (on port 1080 only) opens a conversation for the tunnel: a stream number. */
  private socksTunnel(c: TcpConnection): void {
    if (c.server.port === WIRESHARK_SOCKS_PORT || c.client.port === WIRESHARK_SOCKS_PORT) {
      this.table.reserveStream();
    }
  }

  private tls(
    c: TcpConnection,
    st: ConnState,
    side: Side,
    m: { kind: "tls"; reader: TlsHandshakeReader; helloDone: boolean },
    bytes: Uint8Array,
  ): void {
    if (!m.helloDone) {
      this.tlsHandshake(c, st, side, m, bytes);
      if (side.dir.onData === null) {
        // The handshake could not be read: there is nothing to decrypt with either.
        if (st.tlsDec) this.decryptEnd(st, st.clientHello ? "malformed" : "no-client-hello");
        return;
      }
    }
    if (st.tlsDec === undefined && this.keyLog !== null) {
      st.tlsDec = { dec: null, held: [[], []], heldBytes: 0, pre: EMPTY, plaintext: 0 };
    }
    const d = st.tlsDec;
    if (d && d.ended === undefined) this.decryptPush(c, st, d, side, bytes);
    else if (m.helloDone) this.detach(side);
  }

  /** Reads handshake messages until this side's first ClientHello or ServerHello (then helloDone). */
  private tlsHandshake(
    c: TcpConnection,
    st: ConnState,
    side: Side,
    m: { reader: TlsHandshakeReader; helloDone: boolean },
    bytes: Uint8Array,
  ): void {
    const reader = m.reader;
    reader.push(bytes);
    for (;;) {
      const r = reader.next();
      if (!r.ok) {
        if (r.needMore) {
          if (reader.encrypted || reader.failed) this.detach(side);
          return;
        }
        this.stats.tlsErrors++;
        return this.detach(side);
      }
      const msg = r.value;
      if (msg.type === HS_CLIENT_HELLO && !st.clientHello) {
        const ch = parseClientHello(msg.body);
        if (!ch.ok) {
          this.stats.tlsErrors++;
          return this.detach(side);
        }
        st.clientHello = ch.value;
        this.setClient(c, st, side.isA);
        m.helloDone = true; // the Rust tool fingerprints the first ClientHello only
        return;
      }
      if (msg.type === HS_SERVER_HELLO && !st.serverHello) {
        const sh = parseServerHello(msg.body);
        if (!sh.ok) {
          this.stats.tlsErrors++;
          return this.detach(side);
        }
        st.serverHello = sh.value;
        this.setClient(c, st, !side.isA);
        m.helloDone = true;
        return;
      }
    }
  }

  /** Hands one side's TLS bytes to the decryptor (held until the ClientHello says who is the client). */
  private decryptPush(c: TcpConnection, st: ConnState, d: DecryptState, side: Side, bytes: Uint8Array): void {
    if (d.dec) return this.decryptFeed(c, st, d, side.isA === st.clientSideA ? "client" : "server", bytes);
    d.held[side.isA ? 0 : 1].push(bytes);
    d.heldBytes += bytes.length;
    if (!st.clientHello) {
      // A ServerHello without a ClientHello (capture started mid-handshake): no client random, no keys.
      if (st.serverHello !== undefined || d.heldBytes > HOLD_CAP) this.decryptEnd(st, "no-client-hello");
      return;
    }
    d.dec = new TlsDecryptor(this.keyLog!);
    const clientIdx = st.clientSideA ? 0 : 1;
    const held = d.held;
    d.held = [[], []];
    d.heldBytes = 0;
    for (const b of held[clientIdx]) this.decryptFeed(c, st, d, "client", b);
    const cr = d.dec?.info.clientRandom;
    if (d.ended === undefined && cr && !SESSION_LABELS.some((l) => this.keyLog!.get(l, cr))) {
      return this.decryptEnd(st, "no-keys"); // checked early so that nothing is held for nothing
    }
    const client = st.clientSideA ? st.a : st.b;
    client.dir.cap = Math.max(client.dir.cap, this.maxDecrypted);
    for (const b of held[1 - clientIdx]) this.decryptFeed(c, st, d, "server", b);
  }

  private decryptFeed(
    c: TcpConnection,
    st: ConnState,
    d: DecryptState,
    dir: TlsDir,
    bytes: Uint8Array,
  ): void {
    const dec = d.dec;
    if (!dec || d.ended !== undefined) return;
    dec.push(dir, bytes);
    if (dec.take("server").length > 0) {
      // The server sends application data only after its Finished: nothing more to learn from it.
      this.detach(st.clientSideA ? st.b : st.a);
    }
    const pt = dec.take("client");
    if (pt.length > 0) this.appData(c, st, d, pt);
    const stop = dec.stopped("client") ?? (d.plaintext === 0 ? dec.stopped("server") : undefined);
    if (stop !== undefined) this.decryptEnd(st, stop);
  }

  /** Client plaintext: HTTP/2 (ALPN h2 or the connection preface) or HTTP/1. */
  private appData(c: TcpConnection, st: ConnState, d: DecryptState, bytes: Uint8Array): void {
    if (d.plaintext === 0) this.stats.decrypted++;
    d.plaintext += bytes.length;
    const client = st.clientSideA ? st.a : st.b;
    if (!d.app) {
      if (d.dec?.info.alpn === "h2") d.app = { kind: "h2", s: new Http2RequestStream() };
      else {
        bytes = concat(d.pre, bytes);
        d.pre = EMPTY;
        let i = 0;
        while (i < bytes.length && i < H2_PREFACE.length && bytes[i] === H2_PREFACE[i]) i++;
        if (i === bytes.length && i < H2_PREFACE.length) {
          d.pre = bytes; // a prefix of the preface: wait for more
          return;
        }
        d.app = i === H2_PREFACE.length
          ? { kind: "h2", s: new Http2RequestStream() }
          : { kind: "h1", s: new Http1RequestStream() };
      }
    }
    const app = d.app;
    const errs = sumErrors(app.s.errors);
    if (app.kind === "h2") {
      for (const q of app.s.push(bytes)) this.h2Request(c, st, client, q);
      if (app.s.dropped) {
        // HPACK state is lost: later requests can't be decoded, so stop decrypting.
        this.decryptEnd(st, "http2-dropped");
      }
    } else {
      for (const head of app.s.push(bytes)) this.request(c, st, client, head);
    }
    this.stats.httpErrors += sumErrors(app.s.errors) - errs;
  }

  /** Decryption of this connection is over (a failure, or nothing more to gain). */
  private decryptEnd(st: ConnState, reason: string): void {
    const d = st.tlsDec;
    if (!d || d.ended !== undefined) return;
    d.ended = reason;
    d.dec = null;
    d.held = [[], []];
    d.heldBytes = 0;
    d.pre = EMPTY;
    if (d.plaintext === 0) {
      this.stats.undecryptable++;
      this.stats.undecryptableBy[reason] = (this.stats.undecryptableBy[reason] ?? 0) + 1;
    } else if (reason !== "http2-dropped") this.stats.tlsErrors++;
    // Sides that stayed attached only for decryption stop; one still looking for its hello carries on.
    for (const side of [st.a, st.b]) {
      if (side.mode.kind === "tls" && side.mode.helloDone) this.detach(side);
    }
  }

  private setClient(c: TcpConnection, st: ConnState, isA: boolean): void {
    if (st.clientSideA === undefined) st.clientSideA = isA;
    c.setClient(isA);
  }

  private http(
    c: TcpConnection,
    st: ConnState,
    side: Side,
    m: { kind: "http"; first: boolean; stream?: Http1RequestStream },
    bytes: Uint8Array,
  ): void {
    if (m.first) {
      // The first head is read here so a CONNECT can hand the rest of the stream back to sniffing.
      const b = concat(side.buf, bytes);
      const r = parseRequestHead(b);
      if (!r.ok && r.needMore) {
        side.buf = b;
        if (b.length > 65536) this.detach(side);
        return;
      }
      side.buf = new Uint8Array(0);
      m.first = false;
      if (r.ok && r.value.method === "CONNECT") {
        this.request(c, st, side, r.value);
        st.connectSeen = true;
        side.mode = { kind: "sniff" };
        const rest = b.subarray(r.value.headLength);
        if (rest.length > 0) this.data(c, st, side, rest);
        return;
      }
      bytes = b;
    }
    m.stream ??= new Http1RequestStream();
    const errs = sumErrors(m.stream.errors);
    for (const head of m.stream.push(bytes)) this.request(c, st, side, head);
    this.stats.httpErrors += sumErrors(m.stream.errors) - errs;
  }

  private request(c: TcpConnection, st: ConnState, side: Side, head: RequestHead): void {
    this.addHttp(c, st, side, head.method, head.target, ja4h(head));
  }

  /** An HTTP/2 request: JA4H of the regular header fields (pseudo-headers left out, spec §3.3). */
  private h2Request(c: TcpConnection, st: ConnState, side: Side, q: H2Request): void {
    const method = q.method ?? "";
    const h = ja4h({ method, version: "20", headers: q.headers });
    this.addHttp(c, st, side, method, q.path ?? q.authority ?? "", h);
  }

  private addHttp(
    c: TcpConnection,
    st: ConnState,
    side: Side,
    method: string,
    path: string,
    h: ReturnType<typeof ja4h>,
  ): void {
    this.setClient(c, st, side.isA);
    const rec: HttpRecord = { ja4h: h.ja4h, method, path };
    if (this.withRaw) {
      rec.ja4h_r = h.ja4h_r;
      rec.ja4h_o = h.ja4h_o;
      rec.ja4h_ro = h.ja4h_ro;
    }
    st.http.push(rec);
  }

  private close(c: TcpConnection): void {
    const st = c.user as ConnState;
    c.user = undefined;
    if (st) {
      this.detach(st.a);
      this.detach(st.b);
      st.tlsDec = undefined;
    }
    const rec: StreamRecord = {
      stream: c.stream,
      transport: "tcp",
      src: c.client.addr,
      dst: c.server.addr,
      src_port: c.client.port,
      dst_port: c.server.port,
    };
    let any = false;
    const ch = st?.clientHello;
    if (ch) {
      if (ch.serverName !== undefined) rec.tls_server_name = ch.serverName;
      const f = ja4(ch);
      rec.ja4 = f.ja4;
      if (this.withRaw) {
        rec.ja4_r = f.ja4_r;
        rec.ja4_o = f.ja4_o;
        rec.ja4_ro = f.ja4_ro;
      }
      any = true;
    }
    const sh = st?.serverHello;
    if (sh) {
      const f = ja4s(sh);
      rec.ja4s = f.ja4s;
      if (this.withRaw) rec.ja4s_r = f.ja4s_r;
      any = true;
    }
    if (c.syn) {
      rec.ja4t = ja4t(c.syn, { absent: this.absent });
      any = true;
    }
    if (c.synAck) {
      rec.ja4ts = ja4ts(c.synAck, { absent: this.absent });
      any = true;
    }
    if (c.times.clientTtl !== undefined) {
      const l = ja4lClient(c.times, c.times.clientTtl);
      if (l) rec.ja4l_c = l;
    }
    if (c.times.serverTtl !== undefined) {
      const l = ja4lServer(c.times, c.times.serverTtl);
      if (l) rec.ja4l_s = l;
    }
    if (st && st.http.length > 0) {
      rec.http = st.http;
      any = true;
    }
    this.done(c.stream, any ? rec : null);
  }
}

function sumErrors(e: ErrorCounts): number {
  return e.truncated + e.malformed + e.oversize + e.unsupported;
}

/** Reads a whole capture through an OfflineFingerprinter. */
export function fingerprintCapture(
  reader: CaptureReader,
  opts: OfflineOptions = {},
): { records: StreamRecord[]; stats: OfflineStats } {
  const fp = new OfflineFingerprinter(opts);
  reader.onDecryptionSecrets = (s) => {
    if (!fp.addDecryptionSecrets(s.secretsType, s.data)) {
      fp.stats.warnings.push(`decryption secrets of type 0x${s.secretsType.toString(16)} ignored`);
    }
  };
  for (let p = reader.next(); p !== null; p = reader.next()) fp.packet(p);
  const records = fp.finish();
  fp.stats.warnings.push(...reader.warnings);
  return { records, stats: fp.stats };
}
