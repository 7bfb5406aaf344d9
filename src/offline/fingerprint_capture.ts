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
import { decodePacket } from "../parse/packet.ts";
import {
  DEFAULT_LIMITS,
  type ReassemblyLimits,
  type TcpConnection,
  TcpConnectionTable,
} from "../capture/tcp_reassembly.ts";
import {
  HS_CLIENT_HELLO,
  HS_SERVER_HELLO,
  parseClientHello,
  parseServerHello,
  TlsHandshakeReader,
} from "../parse/tls.ts";
import { Http1RequestStream, parseRequestHead, type RequestHead } from "../parse/http1.ts";
import type { H2Request } from "../parse/http2.ts";
import { keyLogFromDecryptionSecrets, type TlsKeyLog } from "../parse/tls_decrypt.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { ja4s } from "../fingerprint/ja4s.ts";
import { ja4h } from "../fingerprint/ja4h.ts";
import { type AbsentConvention, ja4t, ja4ts } from "../fingerprint/ja4t.ts";
import { ja4lClient, ja4lServer } from "../fingerprint/ja4l.ts";
import { concat, type ConnState, EMPTY, type HttpRecord, type Side } from "./conn.ts";
import { ConnDecryption, type DecryptHost, sumErrors } from "./decrypt.ts";
import {
  consumeSocksClient,
  consumeSocksServer,
  isSocksClientStart,
  isSocksServerStart,
  SOCKS_NEED_MORE,
  SOCKS_NOT_SOCKS,
} from "./socks.ts";
import { allUpper, headEnd, looksLikeRequest, looksLikeTls, startsWith } from "./sniff.ts";

export type { HttpRecord } from "./conn.ts";

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

/** Bytes a sniffing/tunnel state may hold before giving up on a direction. */
const SNIFF_CAP = 8192;
const DEFAULT_DECRYPTED_STREAM_BYTES = 1 << 30;
const WIRESHARK_SOCKS_PORT = 1080;

export class OfflineFingerprinter implements DecryptHost {
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
    const c = this.table.handle(r.value, ts, p.frame);
    this.onSegment?.(p.frame, c.stream);
    // Bounded state on long captures: sweep closed/idle connections every 30 s of capture time.
    if (ts - this.lastEvict > 30e6) {
      if (this.lastEvict !== 0) this.table.evict(ts);
      this.lastEvict = ts;
    }
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
      conn: c,
      a: { mode: { kind: "sniff" }, buf: EMPTY, dir: c.fromA, isA: true },
      b: { mode: { kind: "sniff" }, buf: EMPTY, dir: c.fromB, isA: false },
      http: [],
      connectSeen: false,
    };
    c.user = st;
    this.attach(st, st.a);
    this.attach(st, st.b);
  }

  private attach(st: ConnState, side: Side): void {
    side.dir.onData = (bytes) => {
      this.data(st, side, bytes);
      // The bytes are a view of the capture reader's buffer, valid for this call only: whatever still
      // refers to them is copied (rarely anything: most segments are parsed where they lie).
      if (side.buf.length > 0 && side.buf.buffer === bytes.buffer) side.buf = side.buf.slice();
      // The handshake reader is only used until this side's hello.
      const m = side.mode;
      if (m.kind === "tls" && !m.helloDone && side.dir.onData !== null) m.reader.ownBuffered();
    };
    side.dir.onGap = () => {
      this.stats.gaps++;
      // Parsing across a hole would misread bytes; HTTP resynchronises on its own, everything else stops.
      if (side.mode.kind !== "http") this.detach(side);
      // TLS records can't be found again after a hole.
      if (side.mode.kind === "tls") st.tlsDec?.end("gap");
    };
  }

  detach(side: Side): void {
    side.dir.onData = null;
    side.dir.onGap = null;
    side.buf = EMPTY;
  }

  private data(st: ConnState, side: Side, bytes: Uint8Array): void {
    // Loop because a tunnel handshake hands its leftover bytes to the next mode.
    let input = bytes;
    for (let guard = 0; guard < 8 && side.dir.onData !== null; guard++) {
      const m = side.mode;
      if (m.kind === "tls") return this.tls(st, side, m, input);
      if (m.kind === "http") return this.http(st, side, m, input);
      const b = concat(side.buf, input);
      input = EMPTY;
      side.buf = b;
      if (b.length === 0) return;
      if (m.kind === "sniff") {
        const tls = looksLikeTls(b);
        if (tls === undefined) return;
        if (tls) {
          side.mode = { kind: "tls", reader: new TlsHandshakeReader(), helloDone: false };
        } else if (startsWith(b, "HTTP/")) {
          if (!st.connectSeen) return this.detach(side); // plain responses carry nothing we fingerprint
          side.mode = { kind: "http-response" };
        } else if (looksLikeRequest(b)) {
          side.mode = { kind: "http", first: true };
        } else if (st.socks === undefined && isSocksClientStart(b)) {
          st.socks = b[0] as 4 | 5;
          side.mode = { kind: "socks-client", version: st.socks, step: 0 };
        } else if (st.socks !== undefined && isSocksServerStart(b)) {
          side.mode = { kind: "socks-server", version: st.socks, step: 0 };
        } else if (b.length < 8 && allUpper(b)) {
          return; // the start of a request line or of "HTTP/" split over tiny segments: wait
        } else {
          return this.detach(side); // not a protocol we fingerprint
        }
        input = side.buf;
        side.buf = EMPTY;
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
        side.buf = EMPTY;
        continue;
      }
      // SOCKS: consume the negotiation, then sniff what is tunnelled.
      const used = m.kind === "socks-client"
        ? consumeSocksClient(m, b)
        : consumeSocksServer(m, b, () => this.socksTunnel(st.conn));
      if (used === SOCKS_NOT_SOCKS) return this.detach(side);
      if (used === SOCKS_NEED_MORE) {
        if (b.length > SNIFF_CAP) this.detach(side);
        return;
      }
      side.buf = EMPTY;
      input = b.subarray(used);
      if (m.step < 0) side.mode = { kind: "sniff" };
      if (input.length === 0) return;
    }
  }

  /** Wireshark's SOCKS dissector (on port 1080 only) opens a conversation for the tunnel: a stream number. */
  private socksTunnel(c: TcpConnection): void {
    if (c.server.port === WIRESHARK_SOCKS_PORT || c.client.port === WIRESHARK_SOCKS_PORT) {
      this.table.reserveStream();
    }
  }

  private tls(
    st: ConnState,
    side: Side,
    m: { kind: "tls"; reader: TlsHandshakeReader; helloDone: boolean },
    bytes: Uint8Array,
  ): void {
    if (!m.helloDone) {
      this.tlsHandshake(st, side, m, bytes);
      if (side.dir.onData === null) {
        // The handshake could not be read: there is nothing to decrypt with either.
        st.tlsDec?.end(st.clientHello ? "malformed" : "no-client-hello");
        return;
      }
    }
    if (st.tlsDec === undefined && this.keyLog !== null) {
      st.tlsDec = new ConnDecryption(this, st, this.keyLog, this.maxDecrypted);
    }
    const d = st.tlsDec;
    if (d && d.ended === undefined) d.push(side, bytes);
    else if (m.helloDone) this.detach(side);
  }

  /** Reads handshake messages until this side's first ClientHello or ServerHello (then helloDone). */
  private tlsHandshake(
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
        this.setClient(st, side.isA);
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
        this.setClient(st, !side.isA);
        m.helloDone = true;
        return;
      }
    }
  }

  private setClient(st: ConnState, isA: boolean): void {
    if (st.clientSideA === undefined) st.clientSideA = isA;
    st.conn.setClient(isA);
  }

  private http(
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
      side.buf = EMPTY;
      m.first = false;
      if (r.ok && r.value.method === "CONNECT") {
        this.request(st, side, r.value);
        st.connectSeen = true;
        side.mode = { kind: "sniff" };
        const rest = b.subarray(r.value.headLength);
        if (rest.length > 0) this.data(st, side, rest);
        return;
      }
      bytes = b;
    }
    m.stream ??= new Http1RequestStream();
    const errs = sumErrors(m.stream.errors);
    for (const head of m.stream.push(bytes)) this.request(st, side, head);
    this.stats.httpErrors += sumErrors(m.stream.errors) - errs;
  }

  request(st: ConnState, side: Side, head: RequestHead): void {
    this.addHttp(st, side, head.method, head.target, ja4h(head));
  }

  /** An HTTP/2 request: JA4H of the regular header fields (pseudo-headers left out, spec §3.3). */
  h2Request(st: ConnState, side: Side, q: H2Request): void {
    const method = q.method ?? "";
    const h = ja4h({ method, version: "20", headers: q.headers });
    this.addHttp(st, side, method, q.path ?? q.authority ?? "", h);
  }

  private addHttp(
    st: ConnState,
    side: Side,
    method: string,
    path: string,
    h: ReturnType<typeof ja4h>,
  ): void {
    this.setClient(st, side.isA);
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
