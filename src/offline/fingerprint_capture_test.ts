import { assertEquals } from "../testing/asserts.ts";
import { OfflineFingerprinter, type StreamRecord } from "./fingerprint_capture.ts";
import type { CapturedPacket } from "../parse/pcap.ts";

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
  payload = "",
  ttl = 64,
) {
  const p = enc.encode(payload);
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
