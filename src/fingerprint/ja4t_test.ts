import { assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import { parseTcpOptions } from "../parse/tcp_options.ts";
import { ja4t, ja4ts } from "./ja4t.ts";
import { ja4lClient, ja4lServer } from "./ja4l.ts";

const b = (...x: number[]) => new Uint8Array(x);
const WINDOWS = b(0x02, 0x04, 0x05, 0xb4, 0x01, 0x03, 0x03, 0x08, 0x01, 0x01, 0x04, 0x02);
const MACOS = b(
  0x02,
  0x04,
  0x05,
  0xb4,
  0x01,
  0x03,
  0x03,
  0x06,
  0x01,
  0x01,
  0x08,
  0x0a,
  1,
  2,
  3,
  4,
  0,
  0,
  0,
  0,
  0x04,
  0x02,
  0x00,
  0x00,
);
const LINUX_OLD = b(
  0x02,
  0x04,
  0x05,
  0xb4,
  0x04,
  0x02,
  0x08,
  0x0a,
  1,
  2,
  3,
  4,
  0,
  0,
  0,
  0,
  0x01,
  0x03,
  0x03,
  0x07,
);
const NO_WSCALE = b(0x02, 0x04, 0x05, 0xa0, 0x01, 0x01, 0x08, 0x0a, 1, 2, 3, 4, 0, 0, 0, 0);

Deno.test("ja4t / ja4ts (spec §4.4 examples, both absent-value conventions)", async (t) => {
  const cases: [string, number, Uint8Array, string, string][] = [
    ["Windows 10/11", 64240, WINDOWS, "64240_2-1-3-1-1-4_1460_8", "64240_2-1-3-1-1-4_1460_8"],
    [
      "macOS with EOL padding",
      65535,
      MACOS,
      "65535_2-1-3-1-1-8-4-0-0_1460_6",
      "65535_2-1-3-1-1-8-4-0-0_1460_6",
    ],
    ["Linux (old kernel)", 29200, LINUX_OLD, "29200_2-4-8-1-3_1460_7", "29200_2-4-8-1-3_1460_7"],
    ["no options (gre-erspan-vxlan)", 8192, b(), "8192__0_0", "8192_00_00_00"],
    ["no window scale", 8192, NO_WSCALE, "8192_2-1-1-8_1440_0", "8192_2-1-1-8_1440_00"],
    [
      "window scale 0",
      5744,
      b(0x02, 0x04, 0x05, 0x9c, 0x03, 0x03, 0x00),
      "5744_2-3_1436_0",
      "5744_2-3_1436_00",
    ],
    ["MSS < 10", 1, b(0x02, 0x04, 0x00, 0x05), "1_2_5_0", "1_2_05_00"],
  ];
  for (const [name, window, opts, rust, foxio] of cases) {
    await t.step(name, () => {
      assertEquals(ja4t({ window, options: opts }), rust);
      assertEquals(ja4t({ window, options: parseTcpOptions(opts).options }), rust);
      assertEquals(ja4t({ window, options: opts }, { absent: "foxio" }), foxio);
      assertEquals(ja4ts({ window, options: opts }), rust);
    });
  }
  await t.step("SYN-ACK example (http2-with-cookies, YouTube)", () => {
    const opts = b(0x02, 0x04, 0x05, 0x84, 0x01, 0x01, 0x04, 0x02, 0x01, 0x03, 0x03, 0x08);
    assertEquals(ja4ts({ window: 65535, options: opts }), "65535_2-1-1-4-1-3_1412_8");
  });
  await t.step("malformed length stops the walk after listing the kind", () => {
    assertEquals(ja4t({ window: 10, options: b(0x02, 0x04, 0x05, 0xb4, 0x08, 0x01, 0x01) }), "10_2-8_1460_0");
  });
});

Deno.test("ja4l / ja4ls (spec §6.2 worked example, tls3.pcapng stream 7)", async (t) => {
  const times = { a: 485578, b: 554808, c: 554841, d: 554980, e: 633742, f: 663297 };
  await t.step("Rust form", () => {
    assertEquals(ja4lClient(times, 128), "16_128");
    assertEquals(ja4lServer(times, 35), "34615_35");
  });
  await t.step("Wireshark three-section form", () => {
    assertEquals(ja4lClient(times, 128, { appLatency: true }), "16_128_14777");
    assertEquals(ja4lServer(times, 35, { appLatency: true }), "34615_35_39381");
  });
  await t.step("differences over a second are kept whole; missing marks give undefined", () => {
    assertEquals(ja4lServer({ a: 0, b: 2_000_003 }, 64), "1000001_64");
    assertEquals(ja4lClient({ b: 10 }, 64), undefined);
    assertEquals(ja4lClient({ b: 10, c: 5 }, 64), undefined);
    assertEquals(ja4lClient({ b: 1, c: 9 }, 64, { appLatency: true }), "4_64");
  });
});

Deno.test("ja4t from raw option bytes (walked in place, memoised) equals ja4t from parsed options", () => {
  // Real-looking areas (MSS, NOP, WS, SACK-permitted, timestamps with random values, EOL padding) and random
  // bytes (bogus lengths, truncation); each checked twice so the second call is a memo hit.
  const opt = fc.oneof(
    fc.integer({ min: 0, max: 0xffff }).map((m) => [2, 4, m >> 8, m & 0xff]),
    fc.constant([1]),
    fc.constant([0]),
    fc.integer({ min: 0, max: 14 }).map((s) => [3, 3, s]),
    fc.constant([4, 2]),
    fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 8, maxLength: 8 }).map((t) => [8, 10, ...t]),
    // Any small kind with any length byte (wrong-size MSS/WS, lengths below 2 or past the end).
    fc.tuple(fc.integer({ min: 2, max: 9 }), fc.integer({ min: 0, max: 12 })).map((
      [k, l],
    ) => [k, l, ...new Array(Math.max(0, l - 2)).fill(5)]),
  );
  const area = fc.oneof(
    fc.array(opt, { maxLength: 10 }).map((os) => new Uint8Array(os.flat())),
    fc.uint8Array({ maxLength: 44 }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffff }), area, fc.boolean(), (window, bytes, foxio) => {
      const absent = foxio ? "foxio" as const : "rust" as const;
      const want = ja4t({ window, options: parseTcpOptions(bytes).options }, { absent });
      assertEquals(ja4t({ window, options: bytes }, { absent }), want);
      assertEquals(ja4t({ window, options: bytes.slice() }, { absent }), want);
    }),
    { numRuns: 3000 },
  );
});
