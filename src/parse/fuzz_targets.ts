/**
 * Fuzz targets shared by the property tests (a fast slice on every test run) and scripts/fuzz.ts (the long
 * run): every parser fed by the network or a file. Each target feeds arbitrary bytes to one parser the way
 * the agent or the offline mode does and returns a summary of what it produced. It may throw:
 * - InvariantError: the output broke a property (split ≠ unsplit, a round trip, bytes out of place): a bug;
 * - anything else: a crash. The parsers' own typed errors (CaptureFormatError, EventDecodeError) are caught
 *   inside the targets, and exceptions a parser swallows to keep its promise of never throwing (HTTP/2,
 *   TLS decryption count them) are rethrown here, so they count as crashes too.
 * Seeds are real inputs (FoxIO ClientHellos/ServerHellos, HTTP heads, fixture captures, records built from
 * the BPF layout) that the arbitraries mutate.
 */
import fc from "fast-check";
import { parseClientHello, parseServerHello, TlsHandshakeReader } from "./tls.ts";
import { HeaderBlockCache, Http1RequestStream, parseRequestHead, type RequestHead } from "./http1.ts";
import { parseTcpOptions } from "./tcp_options.ts";
import { type HeaderField, HpackDecoder, huffmanDecode, huffmanEncode } from "./hpack.ts";
import { H2_PREFACE, h2Frame, Http2RequestStream } from "./http2.ts";
import { decodePacket } from "./packet.ts";
import { bytesSource, CaptureFormatError, CaptureReader } from "./pcap.ts";
import { parseKeyLog, TlsDecryptor, type TlsKeyLog } from "./tls_decrypt.ts";
import { decodeEvent, EventDecodeError } from "../bpf/events.ts";
import { DATA_EVENT, EVENT_HDR, EventFlags, EventKind, PKT_EVENT, SYN_FACTS } from "../bpf/layout.gen.ts";
import { StreamAssembler } from "../capture/assembler.ts";
import { TcpConnectionTable } from "../capture/tcp_reassembly.ts";
import { OfflineFingerprinter } from "../offline/fingerprint_capture.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { ja4s } from "../fingerprint/ja4s.ts";
import { ja4h } from "../fingerprint/ja4h.ts";
import { ja4t } from "../fingerprint/ja4t.ts";
import { fromHex } from "./bytes.ts";
import { hpackEncode } from "../../tests/helpers/hpack_encode.ts";

/** The output broke a property that must hold for any input. */
export class InvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvariantError";
  }
}

const FIX = new URL("../../tests/fixtures/", import.meta.url);

export interface Seeds {
  tls: Uint8Array[];
  http: Uint8Array[];
  tcp: Uint8Array[];
  hpack: Uint8Array[];
  http2: Uint8Array[];
  huffman: Uint8Array[];
  packet: Uint8Array[];
  pcap: Uint8Array[];
  event: Uint8Array[];
  /** Client and server TLS streams of decryptable sessions, framed by tlsSessionInput(). */
  tlsSession: Uint8Array[];
  keyLog: TlsKeyLog;
}

/** Small fixture captures (TLS 1.2/1.3, HTTP/1 and HTTP/2 over TLS with keys, CONNECT, SOCKS, tunnels). */
const PCAP_SEEDS = [
  "foxio/pcap/tls12.pcap",
  "foxio/pcap/http1-with-cookies.pcapng",
  "foxio/pcap/tls-alpn-h2.pcap",
  "foxio/pcap/tls-non-ascii-alpn.pcapng",
  "foxio/pcap/https-connect.pcap",
  "foxio/pcap/socks4-https.pcap",
  "foxio/pcap/gre-erspan-vxlan.pcap",
  "foxio/pcap/ipv6.pcapng",
  "local/dev_curl_http_keepalive.pcap",
  "local/dev_curl_https_h11.pcap",
  "local/dev_curl_https_h2.pcap",
  "local/dev_openssl_tls12.pcap",
];
const PACKET_SEEDS = [...PCAP_SEEDS, "foxio/pcap/tcpdump-geneve.pcap", "foxio/pcap/gre-sample.pcap"];

/** A client stream and a server stream in one input: 2-byte client length, client bytes, server bytes. */
export function tlsSessionInput(client: Uint8Array, server: Uint8Array): Uint8Array {
  const b = new Uint8Array(2 + client.length + server.length);
  b[0] = client.length >> 8;
  b[1] = client.length & 0xff;
  b.set(client, 2);
  b.set(server, 2 + client.length);
  return b;
}

/** The two directions of each TCP connection of a capture (client first: the SYN's sender). */
function tcpStreams(file: Uint8Array): [Uint8Array, Uint8Array][] {
  const out: { c: Uint8Array[]; s: Uint8Array[] }[] = [];
  const table = new TcpConnectionTable();
  table.onOpen = (conn) => {
    const o = { c: [] as Uint8Array[], s: [] as Uint8Array[] };
    out.push(o);
    conn.fromA.onData = (b) => (conn.clientIsA !== false ? o.c : o.s).push(b.slice());
    conn.fromB.onData = (b) => (conn.clientIsA !== false ? o.s : o.c).push(b.slice());
  };
  const r = new CaptureReader(bytesSource(file));
  for (let p = r.next(); p; p = r.next()) {
    const d = decodePacket(p.linkType, p.data);
    if (d.ok) table.handle(d.value, 0, p.frame);
  }
  table.finish();
  const cat = (l: Uint8Array[]) => {
    const b = new Uint8Array(l.reduce((n, x) => n + x.length, 0));
    let o = 0;
    for (const x of l) b.set(x, (o += x.length) - x.length);
    return b;
  };
  return out.map((o) => [cat(o.c), cat(o.s)]);
}

/** Event records of each kind, built from the generated layout (as BPF writes them). */
function eventSeeds(http: Uint8Array, hello: Uint8Array): Uint8Array[] {
  const H = EVENT_HDR.fields;
  const rec = (kind: number, size: number, dataLen: number) => {
    const b = new Uint8Array(size);
    const dv = new DataView(b.buffer);
    dv.setUint8(H.kind.offset, kind);
    dv.setUint8(H.family.offset, 2);
    dv.setUint32(H.pid.offset, 1234, true);
    dv.setUint32(H.tid.offset, 1235, true);
    dv.setInt32(H.fd.offset, 7, true);
    b.set([127, 0, 0, 1], H.saddr.offset);
    b.set([127, 0, 0, 1], H.daddr.offset);
    dv.setUint16(H.sport.offset, 40000, true);
    dv.setUint16(H.dport.offset, 443, true);
    dv.setUint32(H.data_len.offset, dataLen, true);
    dv.setUint32(H.total.offset, dataLen, true);
    return { b, dv };
  };
  const data = rec(EventKind.DATA, DATA_EVENT.fields.data.offset + http.length, http.length);
  data.b.set(http, DATA_EVENT.fields.data.offset);
  const pkt = rec(EventKind.PKT, PKT_EVENT.fields.data.offset + hello.length, hello.length);
  pkt.b.set(hello, PKT_EVENT.fields.data.offset);
  // A connection's first read, carrying its SYN.
  const syn = rec(EventKind.DATA, DATA_EVENT.fields.data.offset + http.length, http.length);
  syn.b.set(http, DATA_EVENT.fields.data.offset);
  syn.dv.setUint8(H.flags.offset, EventFlags.SYN);
  const synAt = DATA_EVENT.fields.syn.offset;
  syn.dv.setUint8(synAt + SYN_FACTS.fields.opt_len.offset, 8);
  syn.b.set([2, 4, 5, 0xb4, 1, 3, 3, 7], synAt + SYN_FACTS.fields.options.offset);
  const close = rec(EventKind.CLOSE, 104, 0);
  return [data.b, pkt.b, syn.b, close.b];
}

export async function loadSeeds(): Promise<Seeds> {
  const tlsV = JSON.parse(
    await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_tls.json", import.meta.url)),
  ) as { client_hex: string; server_hello_body_hex?: string }[];
  const httpV = JSON.parse(
    await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_http.json", import.meta.url)),
  ) as { client_hex: string }[];
  const tls = tlsV.map((v) => fromHex(v.client_hex));
  for (const v of tlsV) {
    if (!v.server_hello_body_hex) continue;
    const b = fromHex(v.server_hello_body_hex);
    const rec = new Uint8Array(9 + b.length);
    rec.set([22, 3, 3, (b.length + 4) >> 8, (b.length + 4) & 0xff, 2, 0, b.length >> 8, b.length & 0xff]);
    rec.set(b, 9);
    tls.push(rec);
  }
  const tcp = [
    "020405b4010303080101040 2",
    "020405b40103030601010 80a0000000100000000040 20000",
    "020405b40402080a000000010000000001030307",
  ].map((s) => fromHex(s.replaceAll(" ", "")));
  const http = httpV.map((v) => fromHex(v.client_hex));
  // Header lists of the HTTP vectors, as HTTP/2 would carry them, in every encoding the encoder has.
  const lists: HeaderField[][] = [];
  for (const h of http) {
    const r = parseRequestHead(h);
    if (!r.ok) continue;
    const host = r.value.headers.find(([n]) => n.toLowerCase() === "host")?.[1] ?? "x";
    lists.push([
      [":method", r.value.method],
      [":scheme", "https"],
      [":authority", host],
      [":path", r.value.target],
      ...r.value.headers.filter(([n]) => n.toLowerCase() !== "host").map(([n, v]): HeaderField => [
        n.toLowerCase(),
        v,
      ]),
    ]);
  }
  const hpack: Uint8Array[] = [];
  for (const [i, l] of lists.entries()) {
    hpack.push(
      hpackEncode(l, {
        huffman: i % 2 === 0,
        indexing: (["incremental", "without", "never"] as const)[i % 3],
      }),
    );
  }
  hpack.push(hpackEncode(lists[0] ?? [], { tableSizeUpdate: 256, indexing: "incremental" }));
  const settings = h2Frame(4, 0, 0, new Uint8Array([0, 1, 0, 0, 0x10, 0, 0, 4, 0, 0x60, 0, 0]));
  const http2 = hpack.slice(0, 12).map((block, i) => {
    const half = block.length >> 1;
    const frames = i % 2 === 0
      ? [h2Frame(1, 0x05, 1, block)]
      : [h2Frame(1, 0x01, 3, block.subarray(0, half)), h2Frame(9, 0x04, 3, block.subarray(half))];
    const parts = [H2_PREFACE, settings, h2Frame(8, 0, 0, new Uint8Array([0, 0, 0, 1])), ...frames];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) out.set(p, (o += p.length) - p.length);
    return out;
  });
  const enc = new TextEncoder();
  const huffman = [
    ...lists.flat().flat().slice(0, 40).map((s) => huffmanEncode(enc.encode(s))),
    ...http.slice(0, 4),
  ];
  const pcap = PCAP_SEEDS.map((p) => Deno.readFileSync(new URL(p, FIX)));
  const packet: Uint8Array[] = [];
  for (const p of PACKET_SEEDS) {
    const r = new CaptureReader(bytesSource(Deno.readFileSync(new URL(p, FIX))));
    let n = 0;
    for (let f = r.next(); f && n < 6; f = r.next(), n++) packet.push(f.data.slice());
  }
  const keyLog = parseKeyLog(Deno.readTextFileSync(new URL("local/keys.log", FIX)));
  const tlsSession: Uint8Array[] = [];
  for (
    const p of [
      "local/dev_curl_https_h11.pcap",
      "local/dev_curl_https_h2.pcap",
      "local/dev_openssl_tls12.pcap",
    ]
  ) {
    for (const [c, s] of tcpStreams(Deno.readFileSync(new URL(p, FIX)))) {
      tlsSession.push(tlsSessionInput(c, s));
    }
  }
  return {
    tls,
    http,
    tcp,
    hpack,
    http2,
    huffman,
    packet,
    pcap,
    event: eventSeeds(http[0], tls[0]),
    tlsSession,
    keyLog,
  };
}

/** TLS: the stream reader over the given pushes, then every message through the hello parsers and JA4/JA4S. */
export function tlsTarget(pushes: Uint8Array[]): string[] {
  const r = new TlsHandshakeReader();
  const out: string[] = [];
  for (const p of pushes) {
    r.push(p);
    for (;;) {
      const m = r.next();
      if (!m.ok) break;
      if (m.value.type === 1) {
        const ch = parseClientHello(m.value.body);
        if (ch.ok) out.push(ja4(ch.value).ja4_ro);
      } else if (m.value.type === 2) {
        const sh = parseServerHello(m.value.body);
        if (sh.ok) out.push(ja4s(sh.value).ja4s_r);
      }
    }
  }
  return out;
}

/** HTTP/1: the stream over the given pushes, each head through JA4H; also the one-shot parser. */
export function http1Target(pushes: Uint8Array[]): string[] {
  const s = new Http1RequestStream();
  // The same pushes through a stream with the header-block cache (shared across inputs, as the agent's is):
  // a cached head must be the head a fresh parse gives.
  const cached = new Http1RequestStream({ cache: fuzzHeadCache });
  const out: string[] = [];
  for (const p of pushes) {
    const fresh = s.push(p).map(headText);
    const viaCache = cached.push(p).map(headText);
    if (fresh.join("\n") !== viaCache.join("\n")) {
      throw new InvariantError(`cached head differs: ${viaCache.join(" ")} vs ${fresh.join(" ")}`);
    }
    out.push(...fresh);
  }
  if (pushes.length > 0) parseRequestHead(pushes[0]);
  return out;
}

const fuzzHeadCache = new HeaderBlockCache(64, 64 * 1024);

/**
 * A head as JA4H and the rows see it: a cached block keeps no Referer value, and a head's Cookie value is in
 * `cookie` when its block was keyed without it.
 */
function headText(h: RequestHead): string {
  const cookie = h.cookie;
  return JSON.stringify([
    h.method,
    h.target,
    h.version,
    h.versionText,
    h.headers.map((
      [n, v],
    ) => [n, n === "Referer" ? "" : n === "Cookie" && cookie !== undefined ? cookie : v]),
    h.headLength,
    ja4h(h).ja4h_ro,
    ja4h(h).ja4h,
  ]);
}

export function tcpTarget(area: Uint8Array): string {
  parseTcpOptions(area);
  return ja4t({ window: 65535, options: area }) + ja4t({ window: 1, options: area }, { absent: "foxio" });
}

/** HPACK: one decoder over the pushes taken as consecutive header blocks (the table carries over). */
export function hpackTarget(blocks: Uint8Array[]): string[] {
  const d = new HpackDecoder();
  const out: string[] = [];
  for (const b of blocks) {
    const r = d.decode(b);
    out.push(r.ok ? r.value.map(([n, v]) => n + ":" + v).join("\n") : r.error.code);
  }
  return out;
}

/** Huffman: decoding arbitrary bytes, and decode(encode(x)) === x for the same bytes taken as a string. */
export function huffmanTarget(b: Uint8Array): string {
  const d = huffmanDecode(b);
  const back = huffmanDecode(huffmanEncode(b));
  if (back === null || back.length !== b.length || back.some((x, i) => x !== b[i])) {
    throw new InvariantError("huffman round trip changed the bytes");
  }
  return d === null ? "invalid" : String(d.length);
}

/** HTTP/2: the client stream over the given pushes; each request with its JA4H. */
export function http2Target(pushes: Uint8Array[]): string[] {
  const before = Http2RequestStream.exceptions;
  const s = new Http2RequestStream();
  const out: string[] = [];
  for (const p of pushes) {
    for (const q of s.push(p)) {
      out.push(
        `${q.streamId} ${q.method} ${q.path} ${
          ja4h({ method: q.method ?? "", version: "20", headers: q.headers }).ja4h_ro
        }`,
      );
    }
  }
  out.push(`dropped=${s.dropped}`);
  if (Http2RequestStream.exceptions !== before) throw new Error(`http2 parser exception: ${s.dropReason}`);
  return out;
}

const LINK_TYPES = [1, 0, 101, 108, 113, 228, 229, 276];

/** Packet: one frame decoded under every link type the decoder knows. */
export function packetTarget(b: Uint8Array): string {
  let out = "";
  for (const lt of LINK_TYPES) {
    const r = decodePacket(lt, b);
    out += r.ok
      ? `${r.value.src}:${r.value.srcPort}>${r.value.dst}:${r.value.dstPort} ${r.value.payload.length};`
      : r.error.code + ";";
  }
  return out;
}

/**
 * pcap/pcapng: a whole file through the offline mode with TLS secrets: the reader, packet decoding, TCP
 * reassembly, sniffing, SOCKS/CONNECT, TLS handshakes and decryption, HTTP/1 and HTTP/2, every fingerprint.
 */
export function pcapTarget(file: Uint8Array, keyLog: TlsKeyLog): string {
  let r: CaptureReader;
  try {
    // A small window: the 1 MiB default would cost more than the parsing, and sliding and growing the
    // window gets fuzzed too.
    r = new CaptureReader(bytesSource(file), 512);
  } catch (e) {
    if (e instanceof CaptureFormatError) return "not a capture";
    throw e;
  }
  const before = TlsDecryptor.exceptions + Http2RequestStream.exceptions;
  const fp = new OfflineFingerprinter({ keyLog, withRaw: true });
  r.onDecryptionSecrets = (s) => void fp.addDecryptionSecrets(s.secretsType, s.data);
  for (let p = r.next(); p !== null; p = r.next()) fp.packet(p);
  const recs = fp.finish();
  if (TlsDecryptor.exceptions + Http2RequestStream.exceptions !== before) {
    throw new Error("exception inside TLS decryption or HTTP/2 parsing");
  }
  return JSON.stringify(recs);
}

/** TLS decryption: a session's client and server streams (tlsSessionInput framing) split at the cuts. */
export function tlsDecryptTarget(input: Uint8Array, cuts: number[], keyLog: TlsKeyLog): string {
  const n = input.length < 2 ? 0 : Math.min((input[0] << 8) | input[1], input.length - 2);
  const client = input.subarray(2, 2 + n);
  const server = input.subarray(2 + n);
  const before = TlsDecryptor.exceptions;
  const d = new TlsDecryptor(keyLog);
  const c = splitAt(client, cuts);
  const s = splitAt(server, cuts.map((x) => x >> 1));
  let out = "";
  for (let i = 0; i < Math.max(c.length, s.length); i++) {
    // The server's pieces first: the ServerHello unblocks the client's records.
    if (i < s.length) d.push("server", s[i]);
    if (i < c.length) d.push("client", c[i]);
    out += d.take("client").length + "/" + d.take("server").length + ";";
  }
  if (TlsDecryptor.exceptions !== before) throw new Error("exception inside TLS decryption");
  return out + (d.stopped("client") ?? "") + (d.stopped("server") ?? "");
}

/** Event decoder: one ring-buffer record; its own EventDecodeError is the expected failure. */
export function eventTarget(b: Uint8Array): string {
  try {
    const e = decodeEvent(b);
    return e.type;
  } catch (e) {
    if (e instanceof EventDecodeError) return "error:" + e.reason;
    throw e;
  }
}

/** Content of the test stream at a position (any position has a known byte). */
const at = (pos: number) => (pos * 31 + 7) & 0xff;

/**
 * Stream assembler: the input is a list of operations (4 bytes each: position, length, action) over a
 * stream whose byte at every position is known; whatever comes out must be the stream's bytes, in order,
 * ending where the assembler says the stream is.
 */
export function assemblerTarget(b: Uint8Array): string {
  const a = new StreamAssembler(b.length > 0 ? 64 + b[0] * 64 : 1024);
  let out = "";
  for (let i = 1; i + 4 <= b.length; i += 4) {
    const pos = ((b[i] << 8) | b[i + 1]) + (b[i + 3] & 0x80 ? 1 << 20 : 0);
    const len = 1 + b[i + 2];
    if ((b[i + 3] & 3) === 3) {
      a.skipGap();
      continue;
    }
    const bytes = new Uint8Array(len);
    for (let k = 0; k < len; k++) bytes[k] = at(pos + k);
    const r = a.push(pos, bytes);
    const total = r.out.reduce((n, x) => n + x.length, 0);
    let p = (a.next ?? 0) - total;
    for (const chunk of r.out) {
      for (let k = 0; k < chunk.length; k++) {
        if (chunk[k] !== at(p + k)) throw new InvariantError(`byte at ${p + k} out of place`);
      }
      p += chunk.length;
    }
    out += total + (r.gap ? "g" : "") + ",";
  }
  return out;
}

/**
 * Arbitrary: n random bytes, n up to maxLen spread over the whole range. Drawn as a length and a seed and
 * filled by xorshift32: fast-check draws each byte on its own, which cost more than most parsers.
 */
export function randomBytes(maxLen: number): fc.Arbitrary<Uint8Array> {
  return fc.tuple(fc.nat({ max: maxLen }), fc.integer({ min: 1, max: 0x7fffffff })).map(([n, seed]) => {
    const b = new Uint8Array(n);
    let x = seed;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x & 0xff;
    }
    return b;
  });
}

/** Splits bytes at the given cut points (sorted, deduplicated, clamped). */
export function splitAt(b: Uint8Array, cuts: number[]): Uint8Array[] {
  const pts = [...new Set(cuts.map((c) => Math.min(b.length, Math.max(0, c))))].sort((x, y) => x - y);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of pts) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  out.push(b.subarray(prev));
  return out;
}

/**
 * Arbitrary: a seed with a few random edits (set, insert, delete, truncate, or a slice repeated to grow the
 * input past its seed's size); or purely random bytes, mostly short but up to `maxLen`.
 */
export function mutated(seeds: Uint8Array[], maxLen = 4096): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({
    pos: fc.nat(),
    op: fc.constantFrom("set", "set", "insert", "delete", "truncate", "repeat"),
    // Boundary bytes half of the time: all-ones integer prefixes, continuation bits, zero lengths.
    val: fc.oneof(fc.constantFrom(0x00, 0x01, 0x7f, 0x80, 0xff), fc.integer({ min: 0, max: 255 })),
    n: fc.integer({ min: 1, max: 8 }),
    k: fc.integer({ min: 0, max: 255 }),
  });
  const fromSeed = fc.tuple(fc.constantFrom(...seeds), fc.array(edit, { maxLength: 6 })).map(
    ([seed, edits]) => {
      let b = seed.slice();
      for (const e of edits) {
        if (b.length === 0) break;
        const p = e.pos % b.length;
        if (e.op === "set") b[p] = e.val;
        else if (e.op === "insert") {
          // A run of one byte value, 1 to 256 long (long runs reach length and shift limits).
          const len = Math.min(e.k & 1 ? e.k + 1 : e.n, Math.max(0, maxLen - b.length));
          const nb = new Uint8Array(b.length + len);
          nb.set(b.subarray(0, p), 0);
          nb.fill(e.val, p, p + len);
          nb.set(b.subarray(p), p + len);
          b = nb;
        } else if (e.op === "delete") {
          const nb = new Uint8Array(b.length - Math.min(e.n, b.length - p));
          nb.set(b.subarray(0, p), 0);
          nb.set(b.subarray(p + e.n), p);
          b = nb;
        } else if (e.op === "repeat") {
          // A slice of 1 to 8 bytes, or up to 1 KiB, repeated up to 256 times, capped at maxLen overall.
          const piece = b.subarray(p, Math.min(b.length, p + (e.val & 1 ? e.n : 1 + e.val * 4)));
          const times = Math.min(
            e.k + 1,
            Math.floor(Math.max(0, maxLen - b.length) / Math.max(1, piece.length)),
          );
          if (times <= 0) continue;
          const nb = new Uint8Array(b.length + piece.length * times);
          nb.set(b.subarray(0, p), 0);
          for (let i = 0; i < times; i++) nb.set(piece, p + i * piece.length);
          nb.set(b.subarray(p), p + times * piece.length);
          b = nb;
        } else b = b.slice(0, p);
      }
      return b;
    },
  );
  return fc.oneof(
    { weight: 6, arbitrary: fromSeed },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 256 }) },
    { weight: 1, arbitrary: randomBytes(maxLen) },
  );
}

/** One fuzz target: how its inputs are made and what a run of one input returns. */
export interface Target {
  name: string;
  arb: fc.Arbitrary<Uint8Array>;
  /** Runs one input, pushed in pieces at `cuts` where the parser is a stream parser. */
  run: (input: Uint8Array, cuts: number[]) => string;
  /** For stream parsers: run(input, []) must equal run(input, cuts). */
  splitInvariant: boolean;
}

export function targets(seeds: Seeds): Target[] {
  const join = (x: string[] | string) => (Array.isArray(x) ? x.join("\n") : x);
  return [
    {
      name: "tls",
      arb: mutated(seeds.tls),
      run: (b, c) => join(tlsTarget(splitAt(b, c))),
      splitInvariant: true,
    },
    {
      name: "http1",
      arb: mutated(seeds.http),
      run: (b, c) => join(http1Target(splitAt(b, c))),
      splitInvariant: true,
    },
    { name: "tcp_options", arb: mutated(seeds.tcp, 60), run: (b) => tcpTarget(b), splitInvariant: false },
    // Blocks are separate units: cutting one changes what it means, so no split invariant.
    {
      name: "hpack",
      arb: mutated(seeds.hpack),
      run: (b, c) => join(hpackTarget(splitAt(b, c))),
      splitInvariant: false,
    },
    { name: "huffman", arb: mutated(seeds.huffman), run: (b) => huffmanTarget(b), splitInvariant: false },
    {
      name: "http2",
      arb: mutated(seeds.http2, 16384),
      run: (b, c) => join(http2Target(splitAt(b, c))),
      splitInvariant: true,
    },
    { name: "packet", arb: mutated(seeds.packet), run: (b) => packetTarget(b), splitInvariant: false },
    {
      name: "pcap",
      arb: mutated(seeds.pcap, 16384),
      run: (b) => pcapTarget(b, seeds.keyLog),
      splitInvariant: false,
    },
    {
      name: "tls_decrypt",
      arb: mutated(seeds.tlsSession, 16384),
      run: (b, c) => tlsDecryptTarget(b, c, seeds.keyLog),
      splitInvariant: false,
    },
    { name: "event", arb: mutated(seeds.event, 8192), run: (b) => eventTarget(b), splitInvariant: false },
    {
      name: "assembler",
      arb: randomBytes(1024),
      run: (b) => assemblerTarget(b),
      splitInvariant: false,
    },
  ];
}

/** Cut points for stream parsers. */
export const cutsArb: fc.Arbitrary<number[]> = fc.array(fc.nat({ max: 16384 }), { maxLength: 6 });

/** Runs one input: returns what went wrong ("crash" or "invariant") with the error, or null. */
export function check(
  t: Target,
  input: Uint8Array,
  cuts: number[],
): { kind: "crash" | "invariant"; error: unknown } | null {
  try {
    const whole = t.run(input, []);
    if (t.splitInvariant && cuts.length > 0) {
      const split = t.run(input, cuts);
      if (split !== whole) return { kind: "invariant", error: new InvariantError("split != unsplit") };
    }
    return null;
  } catch (e) {
    return { kind: e instanceof InvariantError ? "invariant" : "crash", error: e };
  }
}

/** Property set used by tests: every target neither crashes nor breaks its invariant. */
export function properties(seeds: Seeds) {
  const out: Record<string, fc.IPropertyWithHooks<[Uint8Array, number[]]>> = {};
  for (const t of targets(seeds)) {
    out[t.name] = fc.property(t.arb, cutsArb, (b, c) => {
      const r = check(t, b, c);
      if (r) throw r.error;
    });
  }
  return out;
}
