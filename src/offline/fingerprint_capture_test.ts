import { assert, assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import {
  fingerprintCapture,
  OfflineFingerprinter,
  type OfflineOptions,
  type StreamRecord,
} from "./fingerprint_capture.ts";
import { bytesSource, type CapturedPacket, CaptureReader } from "../parse/pcap.ts";
import { DEFAULT_LIMITS } from "../capture/tcp_reassembly.ts";
import { decodePacket } from "../parse/packet.ts";
import { parseKeyLog, TlsKeyLog } from "../parse/tls_decrypt.ts";
import { keyLogFromPcapng } from "../../tests/helpers/tls_session.ts";

const enc = new TextEncoder();
const be16 = (v: number) => [v >> 8, v & 0xff];
const be32 = (v: number) => [v >>> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];

/** A raw-IPv4 (LINKTYPE 228) frame. */
function frame(
  src: number,
  sport: number,
  dport: number,
  flags: number,
  seq: number,
  payload: string | Uint8Array = "",
  ttl = 64,
) {
  const p = typeof payload === "string" ? enc.encode(payload) : payload;
  const opts = flags & 0x02 ? [2, 4, 5, 0xb4, 1, 3, 3, 7] : [];
  const tcp = [
    ...be16(sport),
    ...be16(dport),
    ...be32(seq),
    ...be32(0),
    (5 + opts.length / 4) << 4,
    flags,
    ...be16(29200),
    0,
    0,
    0,
    0,
    ...opts,
    ...p,
  ];
  const a = [10, 0, 0, src], b = [10, 0, 0, src === 1 ? 2 : 1];
  return new Uint8Array([0x45, 0, ...be16(20 + tcp.length), 0, 0, 0, 0, ttl, 6, 0, 0, ...a, ...b, ...tcp]);
}

function run(frames: [number, Uint8Array][]): { recs: StreamRecord[]; fp: OfflineFingerprinter } {
  const fp = new OfflineFingerprinter();
  frames.forEach(([us, data], i) => {
    const p: CapturedPacket = {
      frame: i + 1,
      linkType: 228,
      tsSec: 0,
      tsNsec: us * 1000,
      data,
      origLen: data.length,
    };
    fp.packet(p);
  });
  return { recs: fp.finish(), fp };
}

const C = 1, S = 2, SYN = 0x02, ACK = 0x10, PA = 0x18, FA = 0x11;

Deno.test("offline: out-of-order HTTP request, keep-alive, handshake facts", () => {
  const req1a = "GET /a HTTP/1.1\r\nHost: x\r\n";
  const req1b = "Accept-Language: fr\r\n\r\n";
  const req2 = "HEAD /b HTTP/1.1\r\nHost: x\r\nCookie: z=1; a=2\r\n\r\n";
  const { recs, fp } = run([
    [0, frame(C, 40000, 80, SYN, 1000, "", 64)],
    [100, frame(S, 80, 40000, SYN | ACK, 5000, "", 60)],
    [150, frame(C, 40000, 80, ACK, 1001)],
    [200, frame(C, 40000, 80, PA, 1001 + req1a.length, req1b)], // second half first
    [210, frame(C, 40000, 80, PA, 1001, req1a)],
    [220, frame(C, 40000, 80, PA, 1001, req1a)], // retransmission
    [400, frame(S, 80, 40000, PA, 5001, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
    [500, frame(C, 40000, 80, PA, 1001 + req1a.length + req1b.length, req2)],
    [600, new Uint8Array([0x45, 0, 0, 10])], // malformed: counted, not fatal
    [700, frame(C, 40000, 80, FA, 1001 + req1a.length + req1b.length + req2.length)],
    [800, frame(S, 80, 40000, FA, 5100)],
  ]);
  assertEquals(recs.length, 1);
  const r = recs[0];
  assertEquals([r.stream, r.src, r.src_port, r.dst, r.dst_port], [0, "10.0.0.1", 40000, "10.0.0.2", 80]);
  assertEquals([r.ja4t, r.ja4ts, r.ja4l_c, r.ja4l_s], [
    "29200_2-1-3_1460_7",
    "29200_2-1-3_1460_7",
    "25_64",
    "50_60",
  ]);
  assertEquals(r.http?.map((h) => [h.method, h.path, h.ja4h.slice(0, 12)]), [
    ["GET", "/a", "ge11nn02fr00"],
    ["HEAD", "/b", "he11cn010000"],
  ]);
  assertEquals(fp.stats.malformed, { "truncated: ipv4 header": 1 });
  assertEquals([fp.stats.packets, fp.stats.tcpPackets, fp.stats.streams, fp.stats.records], [11, 10, 1, 1]);
});

Deno.test("offline: mid-stream capture takes roles from the payload; emit streams records in order", () => {
  const recs: StreamRecord[] = [];
  const fp = new OfflineFingerprinter({ emit: (r) => (out.push(r.stream), recs.push(r)) });
  const out: number[] = [];
  const frames = [
    frame(S, 80, 40001, ACK, 9000), // the server's packet is seen first
    frame(C, 40001, 80, PA, 100, "GET / HTTP/1.0\r\n\r\n"),
    frame(C, 40002, 80, SYN, 1),
    frame(C, 40001, 80, FA, 118),
    frame(S, 80, 40001, FA, 9000),
  ];
  frames.forEach((data, i) =>
    fp.packet({ frame: i + 1, linkType: 228, tsSec: 1, tsNsec: 0, data, origLen: data.length })
  );
  assertEquals(out, [0]); // stream 0 closed and printed; stream 1 (SYN only) still open
  const rest = fp.finish();
  assertEquals(out, [0, 1]);
  assertEquals(rest, []);
  assertEquals([recs[0].src_port, recs[0].dst_port], [40001, 80]);
  // No header lines: b is the hash of the empty string (spec §3.5, Python's choice).
  assertEquals(recs[0].http?.[0].ja4h, "ge10nn000000_e3b0c44298fc_000000000000_000000000000");
  assertEquals(recs[1].ja4t, "29200_2-1-3_1460_7");
});

// ---------------------------------------------------------------------------------------------------
// TLS decryption (key log given, or pcapng Decryption Secrets Blocks)

const FIX = new URL("../../tests/fixtures/", import.meta.url);
const LOCAL_KEYS = Deno.readTextFileSync(new URL("local/keys.log", FIX));

function runCapture(bytes: Uint8Array, opts: OfflineOptions = {}) {
  return fingerprintCapture(new CaptureReader(bytesSource(bytes)), { withRaw: true, ...opts });
}

/** The capture with its Decryption Secrets Blocks turned into an unknown block type (skipped by readers). */
function withoutSecrets(file: Uint8Array): Uint8Array {
  const out = file.slice();
  const dv = new DataView(out.buffer);
  let le = true;
  for (let off = 0; off + 12 <= out.length;) {
    if (dv.getUint32(off, false) === 0x0a0d0d0a) le = dv.getUint32(off + 8, true) === 0x1a2b3c4d;
    const len = dv.getUint32(off + 4, le);
    if (dv.getUint32(off, le) === 0x0000000a) dv.setUint32(off, 0x0bad, le);
    off += len;
  }
  return out;
}

/** Same sessions, every secret changed in its last hex digit. */
function wrongSecrets(text: string): TlsKeyLog {
  return parseKeyLog(
    text.split("\n").map((l) => l.replace(/([0-9a-f])$/i, (d) => ((parseInt(d, 16) + 1) % 16).toString(16)))
      .join("\n"),
  );
}

Deno.test("offline TLS: a missing or wrong key log leaves JA4 without http and counts undecryptable", async (t) => {
  const h11 = Deno.readFileSync(new URL("local/dev_curl_https_h11.pcap", FIX));
  const h2Foxio = Deno.readFileSync(new URL("foxio/pcap/http2-with-cookies.pcapng", FIX));
  const foxioKeys = keyLogFromPcapng(h2Foxio);
  const stripped = withoutSecrets(h2Foxio);
  assertEquals(keyLogFromPcapng(stripped).size, 0);
  const cases: {
    name: string;
    capture: Uint8Array;
    keyLog?: TlsKeyLog;
    http: number;
    decrypted: number;
    undecryptableBy: Record<string, number>;
  }[] = [
    {
      name: "TLS 1.2, right key log (control)",
      capture: h11,
      keyLog: parseKeyLog(LOCAL_KEYS),
      http: 1,
      decrypted: 1,
      undecryptableBy: {},
    },
    {
      name: "TLS 1.2, no key log: no decryption attempted",
      capture: h11,
      http: 0,
      decrypted: 0,
      undecryptableBy: {},
    },
    {
      name: "TLS 1.2, empty key log",
      capture: h11,
      keyLog: new TlsKeyLog(),
      http: 0,
      decrypted: 0,
      undecryptableBy: { "no-keys": 1 },
    },
    {
      name: "TLS 1.2, someone else's sessions",
      capture: h11,
      keyLog: foxioKeys,
      http: 0,
      decrypted: 0,
      undecryptableBy: { "no-keys": 1 },
    },
    {
      name: "TLS 1.2, wrong master secret",
      capture: h11,
      keyLog: wrongSecrets(LOCAL_KEYS),
      http: 0,
      decrypted: 0,
      undecryptableBy: { "auth-failed": 1 },
    },
    {
      name: "TLS 1.3, embedded secrets removed, none given",
      capture: stripped,
      http: 0,
      decrypted: 0,
      undecryptableBy: {},
    },
    {
      name: "TLS 1.3, embedded secrets removed, wrong traffic secrets",
      capture: stripped,
      keyLog: wrongSecrets(new TextDecoder().decode(secretsText(h2Foxio))),
      http: 0,
      decrypted: 0,
      undecryptableBy: { "auth-failed": 1 },
    },
    {
      name: "TLS 1.3, embedded secrets removed, given as a key log",
      capture: stripped,
      keyLog: foxioKeys,
      http: 15,
      decrypted: 1,
      undecryptableBy: {},
    },
    { name: "TLS 1.3, embedded secrets", capture: h2Foxio, http: 15, decrypted: 1, undecryptableBy: {} },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const { records, stats } = runCapture(c.capture, { keyLog: c.keyLog });
      const tls = records.filter((r) => r.ja4 !== undefined);
      assertEquals(tls.length, 1);
      assert(tls[0].ja4s !== undefined, "ja4s kept");
      assertEquals(tls[0].http?.length ?? 0, c.http);
      assertEquals(stats.decrypted, c.decrypted);
      assertEquals(stats.undecryptableBy, c.undecryptableBy);
      assertEquals(stats.undecryptable, Object.values(c.undecryptableBy).reduce((a, b) => a + b, 0));
      assertEquals(stats.tlsErrors, 0);
    });
  }
});

/** The data of the first Decryption Secrets Block of a pcapng file (little-endian section). */
function secretsText(file: Uint8Array): Uint8Array {
  let data: Uint8Array = new Uint8Array(0);
  const r = new CaptureReader(bytesSource(file));
  r.onDecryptionSecrets = (s) => (data = s.data);
  while (r.next());
  return data;
}

Deno.test("offline TLS: TLS inside CONNECT and SOCKS tunnels reaches the decryptor", () => {
  // No secrets for these sessions: each TLS stream must fail for want of keys, i.e. after its ClientHello
  // was handed over (the tunnel made the client known before the hello, which must not short-cut that).
  for (const name of ["https-connect.pcap", "socks-https-example.pcap"]) {
    const { records, stats } = runCapture(Deno.readFileSync(new URL(`foxio/pcap/${name}`, FIX)), {
      keyLog: new TlsKeyLog(),
    });
    const tls = records.filter((r) => r.ja4 !== undefined).length;
    assert(tls > 0, name);
    assertEquals(stats.undecryptableBy, { "no-keys": tls }, name);
  }
});

Deno.test("offline TLS: a ClientHello split over segments after a CONNECT still reaches the decryptor", () => {
  // The CONNECT makes the client known before its hello is complete; the held bytes must wait for it.
  const ch = firstClientRecord(Deno.readFileSync(new URL("local/dev_curl_https_h11.pcap", FIX)));
  const connect = "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n";
  const ok = "HTTP/1.1 200 Connection established\r\n\r\n";
  let cs = 1001;
  const frames: [number, Uint8Array][] = [
    [0, frame(C, 40000, 3128, SYN, 1000)],
    [100, frame(S, 3128, 40000, SYN | ACK, 5000)],
    [150, frame(C, 40000, 3128, ACK, 1001)],
    [200, frame(C, 40000, 3128, PA, cs, connect)],
    [300, frame(S, 3128, 40000, PA, 5001, ok)],
    [400, frame(C, 40000, 3128, PA, cs += connect.length, ch.subarray(0, 100))],
    [410, frame(C, 40000, 3128, PA, cs + 100, ch.subarray(100))],
  ];
  for (const keyLog of [new TlsKeyLog(), parseKeyLog(LOCAL_KEYS)]) {
    const fp = new OfflineFingerprinter({ keyLog });
    frames.forEach(([us, data], i) =>
      fp.packet({ frame: i + 1, linkType: 228, tsSec: 0, tsNsec: us * 1000, data, origLen: data.length })
    );
    const [rec] = fp.finish();
    assert(rec.ja4 !== undefined);
    // No server side at all: with the right keys the session is pending (not undecryptable), without keys
    // it is known at once to be undecryptable for want of keys (not "no-client-hello").
    assertEquals(fp.stats.undecryptableBy, keyLog.size === 0 ? { "no-keys": 1 } : {});
  }
});

/** The client's first TLS record (its ClientHello) of the first connection of a capture. */
function firstClientRecord(pcap: Uint8Array): Uint8Array {
  const r = new CaptureReader(bytesSource(pcap));
  for (let p = r.next(); p; p = r.next()) {
    const d = decodePacket(p.linkType, p.data);
    if (d.ok && d.value.payload.length > 5 && d.value.payload[0] === 0x16) {
      const len = (d.value.payload[3] << 8) | d.value.payload[4];
      return d.value.payload.slice(0, 5 + len);
    }
  }
  throw new Error("no ClientHello");
}

Deno.test("offline TLS: the client's reassembly cap is raised for decrypted streams", async (t) => {
  const h2Foxio = Deno.readFileSync(new URL("foxio/pcap/http2-with-cookies.pcapng", FIX));
  // A 4 KiB cap stands in for the 1 MiB one: the client sends ~8 KiB of TLS on this connection (5 of its
  // 15 requests fit in the first 4 KiB).
  const limits = { ...DEFAULT_LIMITS, maxStreamBytes: 4096 };
  await t.step("raised (default): every request of the connection", () => {
    const { records } = runCapture(h2Foxio, { limits });
    assertEquals(records[0].http?.length, 15);
  });
  await t.step("not raised: the later requests are lost (what the raise prevents)", () => {
    const { records } = runCapture(h2Foxio, { limits, maxDecryptedStreamBytes: 4096 });
    const n = records[0].http?.length ?? 0;
    assert(n < 15, `${n} requests`);
  });
});

Deno.test("offline TLS: corrupted captures with the right keys never throw", () => {
  const h2 = Deno.readFileSync(new URL("local/dev_curl_https_h2.pcap", FIX));
  const keyLog = parseKeyLog(LOCAL_KEYS);
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 24, max: h2.length - 1 }), fc.nat({ max: 255 })), {
        minLength: 1,
        maxLength: 4,
      }),
      (edits) => {
        const b = h2.slice();
        for (const [at, v] of edits) b[at] = v;
        const { records, stats } = runCapture(b, { keyLog });
        // A corrupted port or flag may split the connection into more streams: counts stay consistent.
        assert(records.length <= stats.streams);
        assert(stats.decrypted + stats.undecryptable <= stats.streams);
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("offline: packet bytes are only read during packet() (the capture reader reuses its buffer)", () => {
  // Each frame is handed over as a view of one scratch buffer that is overwritten with junk right after
  // packet() returns, as the reader's window is by later reads. Anything kept by reference (a partial
  // record, a sniffed prefix, a held TLS chunk, an HTTP head split over segments) would change the output.
  const cases: [string, OfflineOptions][] = [
    ["local/dev_curl_https_h11.pcap", { keyLog: parseKeyLog(LOCAL_KEYS), withRaw: true }],
    ["local/dev_curl_https_h2.pcap", { keyLog: parseKeyLog(LOCAL_KEYS), withRaw: true }],
    ["local/dev_curl_http_keepalive.pcap", { withRaw: true }],
    ["local/dev_python_small_mss.pcap", { withRaw: true }],
    ["foxio/pcap/https-connect.pcap", { withRaw: true }],
    ["foxio/pcap/socks-https-example.pcap", { withRaw: true }],
    ["foxio/pcap/tls-handshake.pcapng", { withRaw: true }],
    ["foxio/pcap/http2-with-cookies.pcapng", { withRaw: true }],
  ];
  const scratch = new Uint8Array(1 << 18);
  const transient = (fp: OfflineFingerprinter, p: CapturedPacket) => {
    scratch.set(p.data);
    fp.packet({ ...p, data: scratch.subarray(0, p.data.length) });
    scratch.fill(0xa5, 0, p.data.length);
  };
  for (const [name, opts] of cases) {
    const bytes = Deno.readFileSync(new URL(name, FIX));
    const expected = runCapture(bytes, opts).records;
    const fp = new OfflineFingerprinter(opts);
    const r = new CaptureReader(bytesSource(bytes));
    r.onDecryptionSecrets = (s) => void fp.addDecryptionSecrets(s.secretsType, s.data);
    for (let p = r.next(); p !== null; p = r.next()) transient(fp, p);
    const got = fp.finish();
    assert(expected.length > 0, name);
    assertEquals(got, expected, name);
  }
  // Heads split over tiny segments: a sniffed prefix ("GE"), a first head waiting for its end, a CONNECT
  // reply head, then a ClientHello in pieces.
  const connect = "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n";
  const reply = "HTTP/1.1 200 Connection established\r\n\r\n";
  const hello = firstClientRecord(Deno.readFileSync(new URL("local/dev_curl_https_h11.pcap", FIX)));
  const get = "GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: split\r\nCookie: x=1\r\n\r\n";
  const pieces = (s: string | Uint8Array, n: number) => {
    const b = typeof s === "string" ? enc.encode(s) : s;
    const out: Uint8Array[] = [];
    for (let i = 0; i < b.length; i += n) out.push(b.subarray(i, i + n));
    return out;
  };
  const frames: [number, Uint8Array][] = [];
  let t = 0, cs = 1000, ss = 5000, cs2 = 9000;
  frames.push([t++, frame(C, 40000, 3128, SYN, cs - 1)], [t++, frame(S, 3128, 40000, SYN | ACK, ss - 1)]);
  for (const p of pieces(connect, 2)) frames.push([t++, frame(C, 40000, 3128, PA, cs, p)]), cs += p.length;
  for (const p of pieces(reply, 3)) frames.push([t++, frame(S, 3128, 40000, PA, ss, p)]), ss += p.length;
  for (const p of pieces(hello, 7)) frames.push([t++, frame(C, 40000, 3128, PA, cs, p)]), cs += p.length;
  frames.push([t++, frame(C, 40001, 80, SYN, cs2 - 1)]);
  for (const p of pieces(get, 2)) frames.push([t++, frame(C, 40001, 80, PA, cs2, p)]), cs2 += p.length;
  const packets = frames.map(([us, data], i): CapturedPacket => ({
    frame: i + 1,
    linkType: 228,
    tsSec: 0,
    tsNsec: us * 1000,
    data,
    origLen: data.length,
  }));
  const stable = new OfflineFingerprinter({ withRaw: true });
  for (const p of packets) stable.packet(p);
  const expected = stable.finish();
  assertEquals(expected.map((r) => [r.ja4 !== undefined, r.http?.map((h) => h.method)]), [
    [true, ["CONNECT"]],
    [false, ["GET"]],
  ]);
  const fp = new OfflineFingerprinter({ withRaw: true });
  for (const p of packets) transient(fp, p);
  assertEquals(fp.finish(), expected);
});
