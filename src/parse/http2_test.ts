import { assert, assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import type { HeaderField } from "./hpack.ts";
import {
  H2_FRAME,
  H2_PREFACE,
  h2Frame,
  type H2Request,
  type Http2Limits,
  Http2RequestStream,
} from "./http2.ts";
import { hpackEncode } from "../../tests/helpers/hpack_encode.ts";

const u8 = (...a: number[]) => Uint8Array.from(a);
function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const SETTINGS = h2Frame(H2_FRAME.SETTINGS, 0, 0, u8(0, 1, 0, 0, 0x10, 0, 0, 4, 0, 0x60, 0, 0));
const WINDOW = h2Frame(H2_FRAME.WINDOW_UPDATE, 0, 0, u8(0, 0xef, 0, 1));
const GET: HeaderField[] = [
  [":method", "GET"],
  [":authority", "localhost"],
  [":scheme", "https"],
  [":path", "/a?b=1"],
  ["user-agent", "curl/8"],
  ["accept", "*/*"],
  ["cookie", "a=1"],
  ["cookie", "b=2"],
];
const END_STREAM = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY = 0x20;

function headers(
  id: number,
  list: HeaderField[],
  flags = END_STREAM | END_HEADERS,
  huffman = false,
): Uint8Array {
  return h2Frame(H2_FRAME.HEADERS, flags, id, hpackEncode(list, { huffman, indexing: "incremental" }));
}

function run(bytes: Uint8Array, limits?: Http2Limits): { s: Http2RequestStream; reqs: H2Request[] } {
  const s = new Http2RequestStream(limits);
  return { s, reqs: s.push(bytes) };
}

Deno.test("http2: requests from well-formed connections", async (t) => {
  await t.step("preface, settings, one GET", () => {
    const { s, reqs } = run(cat(H2_PREFACE, SETTINGS, WINDOW, headers(1, GET)));
    assertEquals(reqs.length, 1);
    const r = reqs[0];
    assertEquals([r.streamId, r.method, r.authority, r.scheme, r.path], [
      1,
      "GET",
      "localhost",
      "https",
      "/a?b=1",
    ]);
    assertEquals(r.headers, GET.slice(4));
    assert(r.endStream);
    assertEquals(s.clientSettings.get(1), 4096);
    assertEquals(s.clientSettings.get(4), 0x600000);
    assertEquals(s.errors.malformed + s.errors.oversize, 0);
  });
  await t.step("padding and priority", () => {
    const block = hpackEncode(GET);
    const payload = cat(u8(3), u8(0x80, 0, 0, 3, 41), block, u8(0, 0, 0));
    const { reqs } = run(
      cat(H2_PREFACE, h2Frame(H2_FRAME.HEADERS, END_HEADERS | PADDED | PRIORITY, 5, payload)),
    );
    assertEquals(reqs.length, 1);
    assertEquals(reqs[0].priority, { exclusive: true, dependsOn: 3, weight: 42 });
    assertEquals(reqs[0].headers, GET.slice(4));
    assert(!reqs[0].endStream);
  });
  await t.step("CONTINUATION frames", () => {
    const block = hpackEncode(GET, { huffman: true });
    const a = block.subarray(0, 5), b = block.subarray(5, 9), c = block.subarray(9);
    const { reqs } = run(cat(
      H2_PREFACE,
      h2Frame(H2_FRAME.HEADERS, END_STREAM, 1, a),
      h2Frame(H2_FRAME.CONTINUATION, 0, 1, b),
      h2Frame(H2_FRAME.CONTINUATION, END_HEADERS, 1, c),
    ));
    assertEquals(reqs.length, 1);
    assertEquals(reqs[0].headers, GET.slice(4));
  });
  await t.step("dynamic table shared across streams; trailers are not requests", () => {
    const second = h2Frame(H2_FRAME.HEADERS, END_HEADERS | END_STREAM, 3, u8(0xbe, 0xbf, 0x82, 0x87, 0x84));
    const trailers = h2Frame(H2_FRAME.HEADERS, END_HEADERS | END_STREAM, 1, hpackEncode([["x-t", "1"]]));
    const { s, reqs } = run(cat(H2_PREFACE, headers(1, GET, END_HEADERS), trailers, second));
    assertEquals(reqs.map((r) => r.streamId), [1, 3]);
    // 0xbe/0xbf: the two newest dynamic entries, i.e. the cookies of stream 1.
    assertEquals(reqs[1].headers, [["cookie", "b=2"], ["cookie", "a=1"]]);
    assertEquals([reqs[1].method, reqs[1].scheme, reqs[1].path], ["GET", "https", "/"]);
    assertEquals(s.stats.trailers, 1);
  });
  await t.step("bodies are skipped, even split mid-frame", () => {
    const body = new Uint8Array(100_000).fill(7);
    const data = cat(
      h2Frame(H2_FRAME.DATA, 0, 1, body.subarray(0, 60_000)),
      h2Frame(H2_FRAME.DATA, END_STREAM, 1, body.subarray(60_000)),
    );
    const all = cat(H2_PREFACE, headers(1, GET, END_HEADERS), data, headers(3, GET));
    const s = new Http2RequestStream();
    const got: H2Request[] = [];
    for (let i = 0; i < all.length; i += 1000) got.push(...s.push(all.subarray(i, i + 1000)));
    assertEquals(got.map((r) => r.streamId), [1, 3]);
    assertEquals(s.stats.dataBytes, 100_000);
  });
  await t.step("unknown frame types, PING, PRIORITY, RST_STREAM, GOAWAY are accepted", () => {
    const { s, reqs } = run(cat(
      H2_PREFACE,
      h2Frame(0xfa, 0xff, 0, u8(1, 2, 3)),
      h2Frame(H2_FRAME.PING, 0, 0, new Uint8Array(8)),
      h2Frame(H2_FRAME.PRIORITY, 0, 3, u8(0, 0, 0, 0, 200)),
      h2Frame(H2_FRAME.RST_STREAM, 0, 3, u8(0, 0, 0, 8)),
      headers(5, GET),
      h2Frame(H2_FRAME.GOAWAY, 0, 0, u8(0, 0, 0, 5, 0, 0, 0, 0)),
    ));
    assertEquals(reqs.length, 1);
    assertEquals(s.stats.unknownFrames, 1);
    assertEquals(s.goaway, { lastStreamId: 5, errorCode: 0 });
    assert(!s.dropped);
  });
});

Deno.test("http2: bad input is counted and drops the state", async (t) => {
  const cases: { name: string; bytes: Uint8Array; code: "malformed" | "oversize"; limits?: Http2Limits }[] = [
    { name: "not a preface", bytes: new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), code: "malformed" },
    {
      name: "CONTINUATION without HEADERS",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.CONTINUATION, END_HEADERS, 1, hpackEncode(GET))),
      code: "malformed",
    },
    {
      name: "frame inside a header block",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.HEADERS, 0, 1, hpackEncode(GET)), SETTINGS),
      code: "malformed",
    },
    {
      name: "CONTINUATION on another stream",
      bytes: cat(
        H2_PREFACE,
        h2Frame(H2_FRAME.HEADERS, 0, 1, hpackEncode(GET)),
        h2Frame(H2_FRAME.CONTINUATION, END_HEADERS, 3, new Uint8Array(0)),
      ),
      code: "malformed",
    },
    {
      name: "padding longer than payload",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.HEADERS, END_HEADERS | PADDED, 1, u8(9, 0x82))),
      code: "malformed",
    },
    { name: "HEADERS on stream 0", bytes: cat(H2_PREFACE, headers(0, GET)), code: "malformed" },
    { name: "even stream id", bytes: cat(H2_PREFACE, headers(2, GET)), code: "malformed" },
    {
      name: "bad SETTINGS length",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.SETTINGS, 0, 0, u8(0, 1, 0))),
      code: "malformed",
    },
    {
      name: "bad PING length",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.PING, 0, 0, u8(1))),
      code: "malformed",
    },
    {
      name: "PUSH_PROMISE from client",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.PUSH_PROMISE, END_HEADERS, 1, u8(0, 0, 0, 2))),
      code: "malformed",
    },
    {
      name: "broken HPACK",
      bytes: cat(H2_PREFACE, h2Frame(H2_FRAME.HEADERS, END_HEADERS, 1, u8(0x80))),
      code: "malformed",
    },
    {
      name: "header list over limit",
      bytes: cat(H2_PREFACE, headers(1, [...GET, ["x-big", "y".repeat(3000)]])),
      code: "oversize",
      limits: { maxHeaderListSize: 1000, maxHeaderBlockSize: 10_000 },
    },
    {
      name: "header block over cap",
      bytes: cat(H2_PREFACE, headers(1, [...GET, ["x-big", "y".repeat(3000)]])),
      code: "oversize",
      limits: { maxHeaderListSize: 1000 },
    },
    {
      name: "frame payload over cap",
      bytes: cat(H2_PREFACE, h2Frame(0xfa, 0, 0, new Uint8Array(70_000))),
      code: "oversize",
    },
    {
      name: "PING flood",
      bytes: cat(
        H2_PREFACE,
        ...Array.from({ length: 101 }, () => h2Frame(H2_FRAME.PING, 0, 0, new Uint8Array(8))),
      ),
      code: "oversize",
      limits: { maxIdleFrames: 100 },
    },
    {
      name: "empty DATA flood",
      bytes: cat(H2_PREFACE, ...Array.from({ length: 101 }, () => h2Frame(H2_FRAME.DATA, 0, 1, u8()))),
      code: "oversize",
      limits: { maxIdleFrames: 100 },
    },
    {
      name: "CONTINUATION flood",
      bytes: cat(
        H2_PREFACE,
        h2Frame(H2_FRAME.HEADERS, 0, 1, u8()),
        ...Array.from({ length: 70 }, () => h2Frame(H2_FRAME.CONTINUATION, 0, 1, u8())),
      ),
      code: "oversize",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const s = new Http2RequestStream(c.limits);
      const reqs = s.push(c.bytes);
      assertEquals(reqs, []);
      assert(s.dropped, "state should be dropped");
      assertEquals(s.errors[c.code], 1);
      // Later bytes, even a valid request, are ignored and counted.
      assertEquals(s.push(headers(7, GET)).length, 0);
      assert(s.droppedBytes > 0);
    });
  }
});

/** A random but valid client connection and the requests it must yield. */
const connArb = fc.array(
  fc.record({
    headers: fc.array(
      fc.tuple(fc.stringMatching(/^[a-z][a-z0-9-]{0,12}$/), fc.string({ maxLength: 30 })),
      { maxLength: 6 },
    ),
    huffman: fc.boolean(),
    split: fc.nat(),
    body: fc.nat({ max: 3000 }),
    ping: fc.boolean(),
  }),
  { minLength: 1, maxLength: 5 },
).map((reqs) => {
  const frames: Uint8Array[] = [H2_PREFACE, SETTINGS];
  const expected: HeaderField[][] = [];
  reqs.forEach((r, i) => {
    const id = 2 * i + 1;
    const list: HeaderField[] = [[":method", "POST"], [":path", `/${i}`], ...(r.headers as HeaderField[])];
    expected.push(r.headers as HeaderField[]);
    const block = hpackEncode(list, { huffman: r.huffman, indexing: "incremental" });
    const cut = r.split % (block.length + 1);
    frames.push(h2Frame(H2_FRAME.HEADERS, 0, id, block.subarray(0, cut)));
    frames.push(h2Frame(H2_FRAME.CONTINUATION, END_HEADERS, id, block.subarray(cut)));
    if (r.ping) frames.push(h2Frame(H2_FRAME.PING, 0, 0, new Uint8Array(8)));
    frames.push(h2Frame(H2_FRAME.DATA, END_STREAM, id, new Uint8Array(r.body)));
  });
  return { bytes: cat(...frames), expected };
});

Deno.test("http2: property tests", async (t) => {
  await t.step("split anywhere equals unsplit, and matches the encoded requests", () => {
    fc.assert(
      fc.property(connArb, fc.array(fc.nat(), { maxLength: 8 }), ({ bytes, expected }, cuts) => {
        const whole = new Http2RequestStream().push(bytes);
        assertEquals(whole.map((r) => r.headers), expected);
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const s = new Http2RequestStream();
        const split: H2Request[] = [];
        let prev = 0;
        // Every piece in the same buffer, overwritten after each push (as the ring buffer's records are):
        // what the stream keeps past a push must be its own copy.
        const scratch = new Uint8Array(bytes.length);
        for (const p of [...points, bytes.length]) {
          const piece = scratch.subarray(0, p - prev);
          piece.set(bytes.subarray(prev, p));
          split.push(...s.push(piece));
          scratch.fill(0xa5);
          prev = p;
        }
        assertEquals(split, whole);
        assertEquals(s.errors, new Http2RequestStream().errors);
      }),
      { numRuns: 200 },
    );
  });
  await t.step("random and mutated input never throws; errors are counted", () => {
    fc.assert(
      fc.property(
        connArb,
        fc.uint8Array({ maxLength: 300 }),
        fc.nat(),
        fc.nat({ max: 255 }),
        (c, junk, at, b) => {
          const s1 = new Http2RequestStream();
          s1.push(cat(H2_PREFACE, junk));
          const total1 = s1.errors.malformed + s1.errors.oversize;
          assert(s1.dropped === (total1 > 0));
          const mutated = c.bytes.slice();
          mutated[at % mutated.length] = b;
          const s2 = new Http2RequestStream();
          s2.push(mutated);
          assert(s2.dropped === (s2.errors.malformed + s2.errors.oversize > 0));
        },
      ),
      { numRuns: 500 },
    );
  });
});
