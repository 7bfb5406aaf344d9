import { assertEquals } from "../testing/asserts.ts";
import { StreamAssembler } from "./assembler.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const join = (parts: Uint8Array[]) => parts.map((p) => dec.decode(p)).join("");

Deno.test("StreamAssembler orders chunks by position", async (t) => {
  const text = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  const cases: { name: string; chunks: [number, number][] }[] = [
    { name: "in order", chunks: [[0, 5], [5, 16], [16, text.length]] },
    { name: "reversed", chunks: [[16, text.length], [5, 16], [0, 5]] },
    { name: "overlapping duplicates", chunks: [[0, 10], [5, 16], [0, 5], [12, text.length]] },
    { name: "one piece", chunks: [[0, text.length]] },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const a = new StreamAssembler();
      a.next = 0;
      const out: Uint8Array[] = [];
      for (const [s, e] of c.chunks) out.push(...a.push(s, enc.encode(text.slice(s, e))).out);
      assertEquals(join(out), text);
      assertEquals(a.held, 0);
      assertEquals(a.stats.delivered, text.length);
    });
  }
});

Deno.test("StreamAssembler skips a gap that never fills, and counts it", () => {
  const a = new StreamAssembler(16);
  assertEquals(join(a.push(100, enc.encode("abcd")).out), "abcd");
  // bytes 104..110 are lost; later chunks pile up past the bound
  assertEquals(a.push(110, enc.encode("0123456789")).out.length, 0);
  const r = a.push(120, enc.encode("ABCDEFGHIJ"));
  assertEquals(r.gap, true);
  assertEquals(join(r.out), "0123456789ABCDEFGHIJ");
  assertEquals(a.stats.gaps, 1);
  assertEquals(a.stats.skipped, 6);
});

Deno.test("StreamAssembler markLost jumps over bytes the capture did not copy", () => {
  const a = new StreamAssembler();
  a.push(0, enc.encode("head"));
  assertEquals(a.markLost(4, 20), true);
  assertEquals(join(a.push(20, enc.encode("next")).out), "next");
  assertEquals(a.stats.skipped, 16);
  // A hole announced ahead of time is skipped when reached.
  assertEquals(a.markLost(30, 40), false);
  assertEquals(join(a.push(24, enc.encode("012345")).out), "012345");
  assertEquals(join(a.push(40, enc.encode("x")).out), "x");
  assertEquals(a.stats.gaps, 2);
});
