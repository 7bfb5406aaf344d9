import { assert, assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import { type HeaderField, HpackDecoder, huffmanDecode, huffmanEncode } from "./hpack.ts";
import { hpackEncode } from "../../tests/helpers/hpack_encode.ts";
import { HUFFMAN_CODES, HUFFMAN_EOS, HUFFMAN_LENGTHS } from "./huffman.ts";

const hex = (s: string) =>
  Uint8Array.from((s.replace(/\s+/g, "").match(/../g) ?? []).map((h) => parseInt(h, 16)));
const enc = new TextEncoder();

const D1 = "Mon, 21 Oct 2013 20:13:21 GMT";
const D2 = "Mon, 21 Oct 2013 20:13:22 GMT";
const SC = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
const LOC = "https://www.example.com";
const REQ1: HeaderField[] = [[":method", "GET"], [":scheme", "http"], [":path", "/"], [
  ":authority",
  "www.example.com",
]];
const REQ2: HeaderField[] = [...REQ1, ["cache-control", "no-cache"]];
const REQ3: HeaderField[] = [
  [":method", "GET"],
  [":scheme", "https"],
  [":path", "/index.html"],
  [":authority", "www.example.com"],
  ["custom-key", "custom-value"],
];
const RES1: HeaderField[] = [[":status", "302"], ["cache-control", "private"], ["date", D1], [
  "location",
  LOC,
]];
const RES2: HeaderField[] = [[":status", "307"], ["cache-control", "private"], ["date", D1], [
  "location",
  LOC,
]];
const RES3: HeaderField[] = [
  [":status", "200"],
  ["cache-control", "private"],
  ["date", D2],
  ["location", LOC],
  ["content-encoding", "gzip"],
  ["set-cookie", SC],
];

interface Step {
  block: string;
  headers: HeaderField[];
  table: HeaderField[];
  size: number;
}

// RFC 7541 Appendix C.3-C.6: each sequence shares one decoder; expected lists, tables and sizes are the RFC's.
const SEQUENCES: { name: string; tableSize: number; steps: Step[] }[] = [
  {
    name: "C.3 requests without Huffman",
    tableSize: 4096,
    steps: [
      {
        block: "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        headers: REQ1,
        table: [[":authority", "www.example.com"]],
        size: 57,
      },
      {
        block: "8286 84be 5808 6e6f 2d63 6163 6865",
        headers: REQ2,
        table: [["cache-control", "no-cache"], [":authority", "www.example.com"]],
        size: 110,
      },
      {
        block: "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        headers: REQ3,
        table: [["custom-key", "custom-value"], ["cache-control", "no-cache"], [
          ":authority",
          "www.example.com",
        ]],
        size: 164,
      },
    ],
  },
  {
    name: "C.4 requests with Huffman",
    tableSize: 4096,
    steps: [
      {
        block: "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        headers: REQ1,
        table: [[":authority", "www.example.com"]],
        size: 57,
      },
      {
        block: "8286 84be 5886 a8eb 1064 9cbf",
        headers: REQ2,
        table: [["cache-control", "no-cache"], [":authority", "www.example.com"]],
        size: 110,
      },
      {
        block: "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        headers: REQ3,
        table: [["custom-key", "custom-value"], ["cache-control", "no-cache"], [
          ":authority",
          "www.example.com",
        ]],
        size: 164,
      },
    ],
  },
  {
    name: "C.5 responses without Huffman, table 256",
    tableSize: 256,
    steps: [
      {
        block: "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a" +
          "3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        headers: RES1,
        table: [["location", LOC], ["date", D1], ["cache-control", "private"], [":status", "302"]],
        size: 222,
      },
      {
        block: "4803 3330 37c1 c0bf",
        headers: RES2,
        table: [[":status", "307"], ["location", LOC], ["date", D1], ["cache-control", "private"]],
        size: 222,
      },
      {
        block: "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04" +
          "677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49" +
          "553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        headers: RES3,
        table: [["set-cookie", SC], ["content-encoding", "gzip"], ["date", D2]],
        size: 215,
      },
    ],
  },
  {
    name: "C.6 responses with Huffman, table 256",
    tableSize: 256,
    steps: [
      {
        block: "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e" +
          "919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        headers: RES1,
        table: [["location", LOC], ["date", D1], ["cache-control", "private"], [":status", "302"]],
        size: 222,
      },
      {
        block: "4883 640e ffc1 c0bf",
        headers: RES2,
        table: [[":status", "307"], ["location", LOC], ["date", D1], ["cache-control", "private"]],
        size: 222,
      },
      {
        block: "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7" +
          "821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed" +
          "4ee5 b106 3d50 07",
        headers: RES3,
        table: [["set-cookie", SC], ["content-encoding", "gzip"], ["date", D2]],
        size: 215,
      },
    ],
  },
];

Deno.test("hpack: RFC 7541 C.2 single representations", async (t) => {
  const cases: { name: string; block: string; headers: HeaderField[]; tableSize: number }[] = [
    {
      name: "C.2.1 literal with indexing",
      block: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
      headers: [["custom-key", "custom-header"]],
      tableSize: 55,
    },
    {
      name: "C.2.2 literal without indexing",
      block: "040c 2f73 616d 706c 652f 7061 7468",
      headers: [[":path", "/sample/path"]],
      tableSize: 0,
    },
    {
      name: "C.2.3 literal never indexed",
      block: "1008 7061 7373 776f 7264 0673 6563 7265 74",
      headers: [["password", "secret"]],
      tableSize: 0,
    },
    { name: "C.2.4 indexed", block: "82", headers: [[":method", "GET"]], tableSize: 0 },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const d = new HpackDecoder();
      const r = d.decode(hex(c.block));
      assert(r.ok, r.ok ? "" : r.error.message);
      assertEquals(r.value, c.headers);
      assertEquals(d.tableSize, c.tableSize);
    });
  }
});

Deno.test("hpack: RFC 7541 C.3-C.6 sequences", async (t) => {
  for (const seq of SEQUENCES) {
    await t.step(seq.name, () => {
      const d = new HpackDecoder({ initialTableSize: seq.tableSize });
      for (const s of seq.steps) {
        const r = d.decode(hex(s.block));
        assert(r.ok, r.ok ? "" : r.error.message);
        assertEquals(r.value, s.headers);
        assertEquals(d.dynamicTable(), s.table);
        assertEquals(d.tableSize, s.size);
      }
    });
  }
});

/** A full integer prefix, 160 continuation bytes carrying zero, then a final 0x01. */
function zeroRun(first: number): Uint8Array {
  const b = new Uint8Array(162).fill(0x80);
  b[0] = first;
  b[161] = 0x01;
  return b;
}

Deno.test("hpack: integers with zero padding up to 2^28 still decode", () => {
  // Size update 31 + 1 + 0·2^7 + 0·2^14 + 0·2^21 = 32: four continuation bytes, three of them padding.
  const d = new HpackDecoder();
  const r = d.decode(hex("3f 81 80 80 00 82"));
  assert(r.ok, r.ok ? "" : r.error.message);
  assertEquals(d.tableLimit, 32);
  assertEquals(r.value, [[":method", "GET"]]);
});

Deno.test("hpack: malformed blocks give typed errors and break the decoder", async (t) => {
  const cases: { name: string; block: Uint8Array; code: string; maxList?: number }[] = [
    { name: "index 0", block: hex("80"), code: "malformed" },
    { name: "index past dynamic table", block: hex("be"), code: "malformed" },
    { name: "truncated integer", block: hex("ff"), code: "malformed" },
    { name: "integer overflow", block: hex("ff ff ff ff ff ff 7f"), code: "malformed" },
    { name: "string past end", block: hex("400a 6375"), code: "malformed" },
    // ~147 zero continuation bytes used to push 2 ** shift to Infinity: NaN index, then a TypeError.
    { name: "zero continuation run (indexed)", block: zeroRun(0xff), code: "malformed" },
    { name: "zero continuation run (literal name index)", block: zeroRun(0x0f), code: "malformed" },
    { name: "zero continuation run (table size update)", block: zeroRun(0x3f), code: "malformed" },
    { name: "size update after field", block: hex("82 3f e1 1f"), code: "malformed" },
    { name: "size update over ceiling", block: hex("3f e1 ff 07"), code: "oversize" },
    // 0x1f8 (9 bits) for "!" followed by seven 0 bits: padding is not EOS-prefix.
    { name: "huffman padding not ones", block: hex("0000 83 fe 3f 00"), code: "malformed" },
    { name: "huffman padding too long", block: hex("0082 ff ff 00"), code: "malformed" },
    { name: "huffman EOS", block: hex("0084 ff ff ff ff 00"), code: "malformed" },
    {
      name: "header list over cap",
      block: hpackEncode([["x-big", "a".repeat(200)]]),
      code: "oversize",
      maxList: 100,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const d = new HpackDecoder({ maxHeaderListSize: c.maxList });
      const r = d.decode(c.block);
      assert(!r.ok, "expected an error");
      assertEquals(r.error.code, c.code);
      assert(d.broken);
      // State is dropped: even a valid block now fails.
      const again = d.decode(hex("82"));
      assert(!again.ok);
    });
  }
});

Deno.test("hpack: eviction and size updates", async (t) => {
  await t.step("entry larger than the table empties it", () => {
    const d = new HpackDecoder({ initialTableSize: 100 });
    assert(d.decode(hpackEncode([["a", "b"]], { indexing: "incremental" })).ok);
    assertEquals(d.tableSize, 34);
    assert(d.decode(hpackEncode([["big", "x".repeat(100)]], { indexing: "incremental" })).ok);
    assertEquals(d.tableSize, 0);
    assertEquals(d.dynamicTable(), []);
  });
  await t.step("size update to 0 evicts everything, then a new limit applies", () => {
    const d = new HpackDecoder();
    assert(d.decode(hpackEncode([["a", "b"], ["c", "d"]], { indexing: "incremental" })).ok);
    assertEquals(d.tableSize, 68);
    const r = d.decode(hpackEncode([["e", "f"]], { indexing: "incremental", tableSizeUpdate: 0 }));
    assert(r.ok);
    assertEquals(d.tableSize, 0);
    assert(d.decode(hpackEncode([], { tableSizeUpdate: 40 })).ok);
    assert(d.decode(hpackEncode([["g", "h"], ["i", "j"]], { indexing: "incremental" })).ok);
    assertEquals(d.dynamicTable(), [["i", "j"]]);
    // Index 62 is the newest entry.
    const r2 = d.decode(hex("be"));
    assert(r2.ok);
    assertEquals(r2.value, [["i", "j"]]);
  });
  await t.step("many insertions keep indexes right across compaction", () => {
    const d = new HpackDecoder({ initialTableSize: 4096 });
    for (let i = 0; i < 1000; i++) {
      assert(d.decode(hpackEncode([[`n${i}`, `v${i}`]], { indexing: "incremental" })).ok);
      const r = d.decode(hex(i > 0 ? "be bf" : "be"));
      assert(r.ok);
      assertEquals(r.value[0], [`n${i}`, `v${i}`]);
      if (i > 0) assertEquals(r.value[1], [`n${i - 1}`, `v${i - 1}`]);
    }
  });
  await t.step("utf-8 values count octets, not characters", () => {
    const d = new HpackDecoder();
    assert(d.decode(hpackEncode([["x", "é"]], { indexing: "incremental" })).ok);
    assertEquals(d.tableSize, 1 + 2 + 32);
  });
});

Deno.test("hpack: huffman round trip over all octets", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const back = huffmanDecode(huffmanEncode(bytes));
      return back !== null && back.length === bytes.length && back.every((b, i) => b === bytes[i]);
    }),
    { numRuns: 500 },
  );
  assertEquals(huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")), enc.encode("www.example.com"));
});

/** RFC 7541 5.2 bit by bit, as the decoder read it before its nibble tables: the reference. */
function huffmanBitByBit(src: Uint8Array): number[] | null {
  const codes: Map<string, number> = new Map();
  for (let sym = 0; sym <= HUFFMAN_EOS; sym++) {
    codes.set(HUFFMAN_CODES[sym].toString(2).padStart(HUFFMAN_LENGTHS[sym], "0"), sym);
  }
  const out: number[] = [];
  let pending = "";
  for (const byte of src) {
    for (let b = 7; b >= 0; b--) {
      pending += (byte >> b) & 1;
      const sym = codes.get(pending);
      if (sym === undefined) continue;
      if (sym === HUFFMAN_EOS) return null;
      out.push(sym);
      pending = "";
    }
  }
  // Padding: fewer than 8 bits, all ones (a prefix of EOS).
  return pending.length <= 7 && !pending.includes("0") ? out : null;
}

Deno.test("hpack: huffman decoding equals the bit-by-bit reading of RFC 7541, invalid input included", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 48 }),
        fc.uint8Array({ maxLength: 48 }).map((b) => huffmanEncode(b)),
      ),
      fc.uint8Array({ maxLength: 4 }),
      (body, tail) => {
        // Encoded strings with random bytes after them: bad padding, EOS, over-long padding.
        for (const src of [body, new Uint8Array([...body, ...tail])]) {
          const got = huffmanDecode(src);
          const want = huffmanBitByBit(src);
          if (want === null ? got !== null : got === null || got.join() !== want.join()) return false;
        }
        return true;
      },
    ),
    { numRuns: 2000 },
  );
  // Hand-picked: EOS (30 ones) inside a string; padding of 11 ones, of exactly 8 ("&" is 11111000), of 7
  // (the most allowed); a zero bit in the padding.
  for (
    const [src, ok] of [
      ["ffff fffc", false],
      ["1f ff", false],
      ["f8 ff", false],
      ["03 ff", true],
      ["1e", false],
      ["1f", true],
    ] as const
  ) {
    assertEquals(huffmanDecode(hex(src)) !== null, ok, src);
    assertEquals(huffmanBitByBit(hex(src)) !== null, ok, src);
  }
});

const headerArb = fc.tuple(
  fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/),
  fc.string({ maxLength: 40 }),
) as fc.Arbitrary<HeaderField>;

Deno.test("hpack: encode/decode property and random input never throws", async (t) => {
  await t.step("round trip with every representation", () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(headerArb, { maxLength: 8 }), { maxLength: 6 }),
        fc.boolean(),
        fc.constantFrom("incremental", "without", "never") as fc.Arbitrary<
          "incremental" | "without" | "never"
        >,
        (blocks, huffman, indexing) => {
          const d = new HpackDecoder();
          for (const b of blocks) {
            const r = d.decode(hpackEncode(b, { huffman, indexing }));
            if (!r.ok || JSON.stringify(r.value) !== JSON.stringify(b)) return false;
          }
          return true;
        },
      ),
      { numRuns: 300 },
    );
  });
  await t.step("random and mutated blocks", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 200 }),
        fc.array(headerArb, { maxLength: 6 }),
        fc.nat(),
        fc.integer({ min: 0, max: 255 }),
        (random, headers, at, byte) => {
          const d = new HpackDecoder();
          const r = d.decode(random);
          if (!r.ok) assert(d.broken);
          const valid = hpackEncode(headers, { huffman: true, indexing: "incremental" });
          if (valid.length > 0) valid[at % valid.length] = byte;
          new HpackDecoder().decode(valid); // must return, not throw
          return true;
        },
      ),
      { numRuns: 1000 },
    );
  });
});
