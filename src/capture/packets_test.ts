import { assert, assertEquals } from "../testing/asserts.ts";
import { PacketTracker, type SegmentFacts } from "./packets.ts";
import { readClientHello } from "../parse/tls.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { concatBytes, fromHex } from "../parse/bytes.ts";

const vectors: { client_hex: string }[] = JSON.parse(
  await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_tls.json", import.meta.url)),
);
/** A real Chrome ClientHello: one 517-byte record. */
const chrome = fromHex(vectors[0].client_hex);
const want = readClientHello(chrome);
assert(want.ok);

/** The same handshake message re-framed into records of at most `size` bytes (two records or more). */
function reframe(rec: Uint8Array, size: number): Uint8Array {
  const hs = rec.subarray(5);
  const out: Uint8Array[] = [];
  for (let i = 0; i < hs.length; i += size) {
    const part = hs.subarray(i, i + size);
    out.push(Uint8Array.of(22, 3, 1, part.length >> 8, part.length & 0xff), part);
  }
  return concatBytes(out);
}

let port = 40000;
/** Segments of one new connection: [offset, bytes] in the order tc reports them. */
function segments(parts: [number, Uint8Array][]): SegmentFacts[] {
  const p = port++;
  return parts.map(([offset, bytes]) => ({
    src: "10.0.0.1",
    src_port: p,
    dst: "10.0.0.2",
    dst_port: 443,
    tsNs: 1e9,
    offset,
    // Each segment in a buffer of its own, as the ring's records are.
    bytes: bytes.slice(),
  }));
}

Deno.test("PacketTracker: a connection's ClientHello from its first segments", async (t) => {
  const half = 200;
  const twoRecords = reframe(chrome, 300);
  const cases: [name: string, segs: [number, Uint8Array][], hello: boolean][] = [
    ["whole hello in the first segment", [[0, chrome]], true],
    ["split over two segments", [[0, chrome.subarray(0, half)], [half, chrome.subarray(half)]], true],
    ["split, the second segment first", [[half, chrome.subarray(half)], [0, chrome.subarray(0, half)]], true],
    ["one segment, the hello in two records", [[0, twoRecords]], true],
    ["first segment of 1 byte", [[0, chrome.subarray(0, 1)], [1, chrome.subarray(1)]], true],
    ["not TLS", [[0, new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n")]], false],
    ["truncated record, nothing after it", [[0, chrome.subarray(0, chrome.length - 1)]], false],
  ];
  for (const [name, parts, hello] of cases) {
    await t.step(name, () => {
      const pt = new PacketTracker();
      const segs = segments(parts);
      const outs = segs.map((s) => {
        const out = pt.segment(s);
        s.bytes.fill(0xee); // the caller's buffer is reused: nothing may point into it
        return out;
      });
      const got = outs.filter((o) => o !== undefined);
      assertEquals(got.length, hello ? 1 : 0);
      assertEquals(
        outs.at(-1) !== undefined,
        hello,
        "the hello comes out with the segment that completes it",
      );
      if (hello) {
        assertEquals(got[0]!.hello, want.value);
        assertEquals(got[0]!.fp, ja4(want.value));
        assertEquals(got[0]!.src_port, segs[0].src_port);
      }
      const s = pt.stats();
      assertEquals([s.hellos, s.segments, s.not_tls, s.parse_errors], [
        hello ? 1 : 0,
        parts.length,
        name === "not TLS" ? 1 : 0,
        0,
      ]);
      // One entry per connection (a tombstone once decided, the flow while the hello is incomplete).
      assertEquals(s.flows, 1);
    });
  }

  await t.step("after the hello: later segments are ignored, a new connection on the tuple is not", () => {
    const pt = new PacketTracker();
    const [first] = segments([[0, chrome]]);
    assert(pt.segment(first) !== undefined);
    assertEquals(
      pt.segment({ ...first, offset: chrome.length, bytes: Uint8Array.of(23, 3, 3, 0, 1, 0) }),
      undefined,
    );
    // Offset 0 again: the kernel's flow started over (a new SYN on a reused port).
    assert(pt.segment({ ...first, bytes: chrome.slice() }) !== undefined);
    assertEquals(pt.stats().hellos, 2);
    pt.close(first);
    assertEquals(pt.stats().flows, 0);
  });

  await t.step("a malformed hello in one record is counted, not returned", () => {
    const pt = new PacketTracker();
    const bad = chrome.slice();
    bad[9 + 34] = 33; // session_id longer than 32
    const [seg] = segments([[0, bad]]);
    assertEquals(pt.segment(seg), undefined);
    assertEquals([pt.stats().parse_errors, pt.stats().hellos], [1, 0]);
  });
});
