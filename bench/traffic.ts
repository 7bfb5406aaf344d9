/**
 * Synthetic BPF ring-buffer records, laid out by src/bpf/layout.gen.ts (a layout change moves them too):
 * per connection (for TLS) the ClientHello segment from TC and the raw reads of the handshake (the hello, then
 * the client's Finished), request reads (recvfrom or SSL_read plaintext) of real browser/curl heads, the
 * connection's first read carrying its SYN as the kernel side folds it in, and a close. Shared by the pipeline
 * and hot-path benchmarks.
 */
import {
  CLOSE_EVENT,
  DATA_EVENT,
  EVENT_HDR,
  EventFlags,
  EventKind,
  Family,
  type FieldLayout,
  Hook,
  PKT_EVENT,
  SYN_FACTS,
} from "../src/bpf/layout.gen.ts";
import { H2_FRAME, H2_PREFACE } from "../src/parse/http2.ts";
import type { HeaderField } from "../src/parse/hpack.ts";
import { hpackEncode } from "../tests/helpers/hpack_encode.ts";

const te = new TextEncoder();

function put(dv: DataView, f: FieldLayout, v: number | bigint | Uint8Array): void {
  if (v instanceof Uint8Array) {
    new Uint8Array(dv.buffer, dv.byteOffset).set(v, f.offset);
    return;
  }
  const n = Number(v);
  switch (f.kind) {
    case "u8":
      return dv.setUint8(f.offset, n);
    case "u16":
      return dv.setUint16(f.offset, n, true);
    case "u32":
      return dv.setUint32(f.offset, n, true);
    case "s32":
      return dv.setInt32(f.offset, n, true);
    case "u64":
      return dv.setBigUint64(f.offset, BigInt(v), true);
    default:
      throw new Error(`cannot put ${f.kind}`);
  }
}

const Hd = EVENT_HDR.fields;

function record(
  size: number,
  hdr: Partial<Record<keyof typeof Hd, number | bigint | Uint8Array>>,
  body: [FieldLayout, number | Uint8Array][] = [],
): Uint8Array {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  for (const [k, v] of Object.entries(hdr)) put(dv, Hd[k as keyof typeof Hd], v!);
  for (const [f, v] of body) put(dv, f, v);
  return b;
}

function u16be(n: number): number[] {
  return [n >> 8, n & 255];
}
function vec16(b: number[]): number[] {
  return [...u16be(b.length), ...b];
}

/** A TLS 1.3 ClientHello record as a browser sends it (SNI, groups, ALPN h2/http1.1, versions, sigalgs). */
function clientHello(sni: string): Uint8Array {
  const ext = (type: number, data: number[]) => [...u16be(type), ...vec16(data)];
  const name = [...te.encode(sni)];
  const ciphers = [
    0x1301,
    0x1302,
    0x1303,
    0xc02b,
    0xc02f,
    0xc02c,
    0xc030,
    0xcca9,
    0xcca8,
    0xc013,
    0xc014,
    0x009c,
  ]
    .flatMap(u16be);
  const alpn = [2, ...te.encode("h2"), 8, ...te.encode("http/1.1")];
  const exts = [
    ...ext(0, vec16([0, ...vec16(name)])),
    ...ext(23, []),
    ...ext(65281, [0]),
    ...ext(10, vec16([0x001d, 0x0017, 0x0018].flatMap(u16be))),
    ...ext(11, [1, 0]),
    ...ext(35, []),
    ...ext(16, vec16(alpn)),
    ...ext(5, [1, 0, 0, 0, 0]),
    ...ext(13, vec16([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601].flatMap(u16be))),
    ...ext(51, vec16([...u16be(0x001d), ...vec16(new Array(32).fill(7))])),
    ...ext(45, [1, 1]),
    ...ext(43, [4, ...u16be(0x0304), ...u16be(0x0303)]),
  ];
  const body = [
    3,
    3,
    ...new Array(32).fill(1),
    32,
    ...new Array(32).fill(2),
    ...vec16(ciphers),
    1,
    0,
    ...vec16(exts),
  ];
  const hs = [1, 0, ...u16be(body.length), ...body];
  return Uint8Array.from([0x16, 3, 1, ...u16be(hs.length), ...hs]);
}

const UAS = [
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
  "curl/8.5.0",
];

/** Request heads as browsers send them (~300–600 bytes). */
function heads(unique = false): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < 16; i++) {
    const ua = UAS[i % UAS.length];
    const lines = [
      `${i % 5 === 4 ? "POST" : "GET"} /shop/items/${1000 + i}?ref=home&page=${i} HTTP/1.1`,
      "Host: www.example.test",
      "Connection: keep-alive",
      `User-Agent: ${ua}`,
      "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
      "Accept-Encoding: gzip, deflate, br",
      "Accept-Language: en-US,en;q=0.9,de;q=0.7",
    ];
    if (i % 2 || unique) lines.push(`Cookie: session=${"ab12".repeat(8)}; theme=dark; consent=1`);
    if (i % 3) lines.push("Referer: https://www.example.test/shop/");
    if (i % 5 === 4) lines.push("Content-Type: application/x-www-form-urlencoded", "Content-Length: 0");
    out.push(te.encode(lines.join("\r\n") + "\r\n\r\n"));
  }
  return out;
}

/**
 * An HTTP/2 connection's reads as a browser sends them, `n` requests: the first read holds the preface,
 * SETTINGS, WINDOW_UPDATE and the first request's HEADERS (its fields added to the HPACK table), each later
 * read one HEADERS frame whose fields are indexed in that table but for its `:path` (a Huffman literal).
 */
function h2Reads(n: number): Uint8Array[] {
  const frame = (type: number, flags: number, id: number, payload: Uint8Array | number[]) => [
    ...[payload.length >> 16, (payload.length >> 8) & 255, payload.length & 255, type, flags],
    ...[id >>> 24, (id >> 16) & 255, (id >> 8) & 255, id & 255],
    ...payload,
  ];
  const path = (k: number) => `/shop/items/${1000 + k}?ref=home&page=${k}`;
  const first: HeaderField[] = [
    [":method", "GET"],
    [":authority", "www.example.test"],
    [":scheme", "https"],
    [":path", path(0)],
    ["user-agent", UAS[0]],
    ["accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"],
    ["accept-encoding", "gzip, deflate, br, zstd"],
    ["accept-language", "en-US,en;q=0.9,de;q=0.7"],
  ];
  // Added to the table in order, so the newest (accept-language) is 62 and :authority 67.
  const END_HEADERS_STREAM = 0x5;
  const reads: Uint8Array[] = [Uint8Array.from([
    ...H2_PREFACE,
    ...frame(H2_FRAME.SETTINGS, 0, 0, [0, 2, 0, 0, 0, 0, 0, 4, 0, 0x60, 0, 0]),
    ...frame(H2_FRAME.WINDOW_UPDATE, 0, 0, [0, 0xef, 0, 1]),
    ...frame(
      H2_FRAME.HEADERS,
      END_HEADERS_STREAM,
      1,
      hpackEncode(first, { huffman: true, indexing: "incremental" }),
    ),
  ])];
  for (let k = 1; k < n; k++) {
    const block = [
      0x82, // :method GET (static)
      0x80 | 67, // :authority
      0x87, // :scheme https (static)
      ...hpackEncode([[":path", path(k)]], { huffman: true, indexing: "without" }),
      0x80 | 65, // user-agent
      0x80 | 64,
      0x80 | 63,
      0x80 | 62,
    ];
    reads.push(Uint8Array.from(frame(H2_FRAME.HEADERS, END_HEADERS_STREAM, 1 + 2 * k, block)));
  }
  return reads;
}

const HEX_DIGITS = te.encode("0123456789abcdef");

/** The SYN facts' fields where they sit in a data event. */
const SYN_AT = Object.fromEntries(
  Object.entries(SYN_FACTS.fields).map((
    [k, f],
  ) => [k, { ...f, offset: DATA_EVENT.fields.syn.offset + f.offset }]),
) as { [K in keyof typeof SYN_FACTS.fields]: FieldLayout };
const SYN_OPTS = Uint8Array.from([2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);

/**
 * Generates the events of connection after connection: first payload (TC: a ClientHello, or with plainPkt
 * the start of an HTTP request), REQUESTS_PER_CONN request reads (SSL_read plaintext or recvfrom; the first
 * carries the connection's SYN), close.
 * Each record is a fresh copy of a prebuilt template (as the ring reader hands out copies) with the
 * per-connection fields patched in, so generating costs little next to the pipeline.
 */
export interface TrafficOptions {
  /** Requests read on each connection before it closes. */
  requestsPerConn: number;
  /** Share of connections that are TLS (requests from SSL_read plaintext), 0..1. */
  tlsShare: number;
  /** Also send a plain-HTTP connection's first segment from tc (what the BPF side did before it stopped). */
  plainPkt?: boolean;
  /**
   * Every request of a connection sends the same head (a bot, an API client, a load generator); otherwise
   * the heads rotate (a browser loading a page: document, scripts, images, each its own headers).
   */
  sameHead?: boolean;
  /**
   * What the kernel never delivered: the SYN (tc missed it, or it aged out before the first read: no JA4T
   * comes), the close (a full ring dropped it, counted: the connection's state stays until evicted). How the
   * agent fares when its input is incomplete.
   */
  lostSyn?: boolean;
  lostClose?: boolean;
  /**
   * Every `synOnly`-th connection is a SYN and nothing else (a port scanner, a load balancer's TCP health
   * check: connected, never read from): the kernel keeps its SYN for a first read that never comes, so it
   * sends no record at all; the mode shows that such connections cost user space nothing.
   */
  synOnly?: number;
  /** TLS connections speak HTTP/2 (a browser's usual HTTPS): the preface and HPACK header blocks. */
  h2?: boolean;
  /**
   * Every connection's heads carry a session cookie of its own (browsers of distinct users): no header
   * block repeats across connections, so each connection's first head is parsed and fingerprinted anew.
   */
  uniqueCookie?: boolean;
  /**
   * With uniqueCookie: a visitor's cookie serves this many consecutive connections (a page and its
   * subresources over a browser's parallel connections, each with other header lines), not one.
   */
  connsPerVisitor?: number;
  /** Clients and server on IPv6 (2001:db8::/32): connection keys are strings then, not numbers. */
  ipv6?: boolean;
  /** Every request the one short head a load generator sends (wrk's, as the live benchmarks send it). */
  toolHead?: boolean;
}

/** wrk's request head with `-H "Connection: close"` against the live benchmarks' nginx. */
const TOOL_HEAD = "GET / HTTP/1.1\r\nHost: 127.0.0.1:22080\r\nConnection: close\r\n\r\n";

/** The benchmarks' traffic mixes, by name (bench/hotpath_bench.ts, bench/alloc.ts, bench/stages.ts). */
export const TRAFFIC_MODES: Record<string, TrafficOptions> = {
  keepalive: { requestsPerConn: 100, tlsShare: 0 },
  /** keep-alive where a connection repeats one head */
  repeat: { requestsPerConn: 100, tlsShare: 0, sameHead: true },
  close: { requestsPerConn: 1, tlsShare: 0 },
  tls: { requestsPerConn: 10, tlsShare: 1 },
  /** tls, in HTTP/2: each request a HEADERS frame, its fields indexed in the connection's HPACK table */
  h2: { requestsPerConn: 10, tlsShare: 1, h2: true },
  /** close without the SYN records: no connection has a JA4T (rows must not wait for one) */
  "close-nosyn": { requestsPerConn: 1, tlsShare: 0, lostSyn: true },
  /** close without the close records: every connection stays tracked until evicted */
  "close-noclose": { requestsPerConn: 1, tlsShare: 0, lostClose: true },
  /** close where every second connection is a SYN alone (scanners, TCP health checks): no records for those */
  "close-scan": { requestsPerConn: 1, tlsShare: 0, synOnly: 2 },
  /** close where every connection has its own session cookie (no header block seen before) */
  "close-unique": { requestsPerConn: 1, tlsShare: 0, uniqueCookie: true },
  /** close over IPv6 */
  "close-v6": { requestsPerConn: 1, tlsShare: 0, ipv6: true },
  /** keep-alive, 10 requests per connection, each connection its own session cookie */
  "keepalive-unique": { requestsPerConn: 10, tlsShare: 0, uniqueCookie: true },
  /** close-unique where a visitor's cookie comes on 8 consecutive connections, each with other header lines */
  "close-visitor": { requestsPerConn: 1, tlsShare: 0, uniqueCookie: true, connsPerVisitor: 8 },
  /** close, every connection wrk's one short head (a load generator, a health check, a bot flood) */
  "close-tool": { requestsPerConn: 1, tlsShare: 0, toolHead: true },
};

export class Traffic {
  readonly heads: Uint8Array[];
  /** uniqueCookie: where each head's session value starts. */
  readonly #cookieAt: number[];
  readonly opts: TrafficOptions;
  readonly hello = clientHello("www.example.test");
  conn = 0;
  rows = 0;
  readonly #pkt: [Uint8Array, Uint8Array];
  /** [tls ? 1 : 0][head index]; #first: the same as a connection's first read, carrying its SYN */
  readonly #data: Uint8Array[][];
  readonly #first: Uint8Array[][];
  readonly #close: Uint8Array;
  /**
   * A TLS connection's raw reads, as the kernel side copies them until SSL_read's plaintext begins: the
   * ClientHello (the connection's first read, carrying its SYN), then the client's ChangeCipherSpec and
   * encrypted Finished, after which user space stops looking.
   */
  readonly #rawTls: [Uint8Array, Uint8Array];
  /** h2: the SSL_read plaintext reads of a connection, in order (h2Reads). */
  readonly #h2: Uint8Array[];

  constructor(opts: Partial<TrafficOptions> = {}) {
    this.opts = { requestsPerConn: 4, tlsShare: 0.5, ...opts };
    this.heads = this.opts.toolHead ? [te.encode(TOOL_HEAD)] : heads(this.opts.uniqueCookie);
    const marker = te.encode("session=");
    this.#cookieAt = this.heads.map((h) => {
      for (let i = 0; i + marker.length <= h.length; i++) {
        if (marker.every((b, j) => h[i + j] === b)) return i + marker.length;
      }
      return -1;
    });
    const hdr = (kind: number, hook: number, flags = 0) => ({
      kind,
      hook,
      family: this.opts.ipv6 ? Family.INET6 : Family.INET,
      flags,
      comm: te.encode("nginx"),
      daddr: this.opts.ipv6
        ? Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1])
        : Uint8Array.from([10, 0, 0, 1, ...new Array(12).fill(0)]),
      dport: 443,
    });
    const pkt = (first: Uint8Array) => {
      const r = record(PKT_EVENT.fields.data.offset + first.length, {
        ...hdr(EventKind.PKT, Hook.TC),
        data_len: first.length,
        total: first.length,
      });
      r.set(first, PKT_EVENT.fields.data.offset);
      return r;
    };
    this.#pkt = [pkt(this.heads[0].subarray(0, 64)), pkt(this.hello)];
    // A read of `bytes` by the hook, the connection's SYN folded in when `withSyn`.
    const read = (bytes: Uint8Array, hook: number, flags: number, withSyn: boolean) => {
      const r = record(
        DATA_EVENT.fields.data.offset + bytes.length,
        {
          ...hdr(EventKind.DATA, hook, flags | EventFlags.LAST_CHUNK | (withSyn ? EventFlags.SYN : 0)),
          data_len: bytes.length,
          total: bytes.length,
        },
        withSyn
          ? [
            [SYN_AT.window, 64240],
            [SYN_AT.opt_len, SYN_OPTS.length],
            [SYN_AT.options, SYN_OPTS],
          ]
          : [],
      );
      r.set(bytes, DATA_EVENT.fields.data.offset);
      return r;
    };
    const data = (withSyn: boolean) =>
      [false, true].map((tls) =>
        this.heads.map((head) =>
          read(head, tls ? Hook.SSL_READ : Hook.TP_RECVFROM, tls ? EventFlags.PLAINTEXT : 0, withSyn)
        )
      );
    this.#data = data(false);
    this.#first = data(true);
    const raw = (bytes: Uint8Array, withSyn: boolean) => read(bytes, Hook.TP_READ, 0, withSyn);
    // TLS 1.3: ChangeCipherSpec (middlebox compatibility) + the Finished as an application-data record.
    const finished = Uint8Array.from([20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 53, ...new Array(53).fill(0x5a)]);
    this.#rawTls = [raw(this.hello, true), raw(finished, false)];
    this.#h2 = h2Reads(this.opts.requestsPerConn).map((bytes) =>
      read(bytes, Hook.SSL_READ, EventFlags.PLAINTEXT, false)
    );
    this.#close = record(CLOSE_EVENT.size, hdr(EventKind.CLOSE, Hook.TP_CLOSE));
  }

  /** A copy of a template with this connection's process, socket, time and client address. */
  #rec(tpl: Uint8Array, c: number): [Uint8Array, DataView] {
    const r = tpl.slice();
    const dv = new DataView(r.buffer);
    const pid = 2000 + (c & 1);
    dv.setUint32(Hd.pid.offset, pid, true);
    dv.setUint32(Hd.tid.offset, pid, true);
    dv.setInt32(Hd.fd.offset, 10 + (c % 4096), true);
    dv.setBigUint64(Hd.ts_ns.offset, BigInt(Math.round(performance.now() * 1e6)), true);
    let a = Hd.saddr.offset;
    if (this.opts.ipv6) {
      // 2001:db8:1::(the same three bytes as the IPv4 client's last three, in the last four)
      r.set([0x20, 0x01, 0x0d, 0xb8, 0, 1], a);
      a += 12;
      r[a] = 0;
    } else r[a] = 10;
    r[a + 1] = 1 + (c >> 24 & 63);
    r[a + 2] = c >> 16 & 255;
    r[a + 3] = c >> 8 & 255;
    dv.setUint16(Hd.sport.offset, 1024 + (c & 0x7fff), true);
    return [r, dv];
  }

  /** One whole connection's records; returns how many requests (rows) they carry. */
  connection(out: Uint8Array[]): number {
    const c = this.conn++;
    const tls = (c % 100) < this.opts.tlsShare * 100;
    const isn = (c * 2654435761) >>> 0;
    if (this.opts.synOnly && c % this.opts.synOnly === 0) return 0;
    if (tls || this.opts.plainPkt) {
      // tc sends a plain-HTTP connection's first segment no more (nothing in it to fingerprint).
      const [pkt, pdv] = this.#rec(this.#pkt[tls ? 1 : 0], c);
      pdv.setUint32(PKT_EVENT.fields.seq.offset, (isn + 1) >>> 0, true);
      out.push(pkt);
    }
    let rawPos = 0;
    if (tls) {
      // The raw stream's reads: the hello (with the SYN), then the client's Finished.
      for (let i = 0; i < 2; i++) {
        const [rec, dv] = this.#rec(this.#rawTls[i], c);
        if (i === 0) {
          if (this.opts.lostSyn) dv.setUint8(Hd.flags.offset, dv.getUint8(Hd.flags.offset) & ~EventFlags.SYN);
          dv.setUint32(SYN_AT.seq.offset, isn, true);
          dv.setBigUint64(SYN_AT.ts_ns.offset, dv.getBigUint64(Hd.ts_ns.offset, true), true);
        }
        dv.setBigUint64(DATA_EVENT.fields.pos.offset, BigInt(rawPos), true);
        out.push(rec);
        rawPos += this.#rawTls[i].length - DATA_EVENT.fields.data.offset;
      }
    }
    let pos = 0;
    for (let k = 0; k < this.opts.requestsPerConn; k++) {
      const h = (this.opts.sameHead ? c : c + k) % this.heads.length;
      // A TLS connection's SYN came with its first raw read.
      const withSyn = k === 0 && !this.opts.lostSyn && !tls;
      const h2 = tls && this.opts.h2;
      const tpl = h2 ? this.#h2[k] : (withSyn ? this.#first : this.#data)[tls ? 1 : 0][h];
      const [rec, dv] = this.#rec(tpl, c);
      if (this.opts.uniqueCookie && !h2 && this.#cookieAt[h] >= 0) {
        // The session value's first 8 characters: the connection's (or its visitor's) number in hex.
        const at = DATA_EVENT.fields.data.offset + this.#cookieAt[h];
        const v = Math.floor(c / (this.opts.connsPerVisitor ?? 1));
        for (let i = 0; i < 8; i++) rec[at + i] = HEX_DIGITS[(v >>> (28 - 4 * i)) & 15];
      }
      dv.setBigUint64(DATA_EVENT.fields.pos.offset, BigInt(pos), true);
      if (withSyn) {
        dv.setUint32(SYN_AT.seq.offset, isn, true);
        dv.setBigUint64(SYN_AT.ts_ns.offset, dv.getBigUint64(Hd.ts_ns.offset, true), true);
      }
      out.push(rec);
      pos += h2 ? tpl.length - DATA_EVENT.fields.data.offset : this.heads[h].length;
    }
    const [close, cdv] = this.#rec(this.#close, c);
    if (tls) {
      cdv.setBigUint64(CLOSE_EVENT.fields.pos_plaintext.offset, BigInt(pos), true);
      cdv.setBigUint64(CLOSE_EVENT.fields.pos_raw.offset, BigInt(rawPos), true);
    } else cdv.setBigUint64(CLOSE_EVENT.fields.pos_raw.offset, BigInt(pos), true);
    if (!this.opts.lostClose) out.push(close);
    this.rows += this.opts.requestsPerConn;
    return this.opts.requestsPerConn;
  }
}

/** A ring-shaped area holding a batch of records, and where each one starts. */
export interface RingBatch {
  area: Uint8Array;
  view: DataView;
  offs: number[];
}

/**
 * Lays records out as in the mapped ring (8-byte aligned, each behind an 8-byte header), to be handed over in
 * place as RingReader's onRecordAt does. Reuses `prev`'s area when it is large enough.
 */
export function ringBatch(recs: Uint8Array[], prev?: RingBatch): RingBatch {
  let size = 0;
  for (const r of recs) size += (r.length + 8 + 7) & ~7;
  let area = prev?.area, view = prev?.view;
  if (area === undefined || view === undefined || area.length < size) {
    area = new Uint8Array(Math.max(size * 2, 1 << 20));
    view = new DataView(area.buffer);
  }
  const offs: number[] = [];
  let off = 0;
  for (const r of recs) {
    area.set(r, off + 8);
    offs.push(off + 8);
    off += (r.length + 8 + 7) & ~7;
  }
  return { area, view, offs };
}
