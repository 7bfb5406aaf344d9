import { assertEquals } from "../testing/asserts.ts";
import { parseTcpOptions } from "./tcp_options.ts";

const b = (...x: number[]) => new Uint8Array(x);

Deno.test("parseTcpOptions", async (t) => {
  await t.step("all common kinds, in order, with values", () => {
    const r = parseTcpOptions(b(
      0x02,
      0x04,
      0x05,
      0xb4, // MSS 1460
      0x01, // NOP
      0x03,
      0x03,
      0x07, // WS 7
      0x04,
      0x02, // SACK permitted
      0x08,
      0x0a,
      0,
      0,
      0,
      1,
      0,
      0,
      0,
      2, // TS 1/2
      0x05,
      0x0a,
      0,
      0,
      0,
      10,
      0,
      0,
      0,
      20, // SACK block 10-20
      0xfe,
      0x04,
      0xab,
      0xcd, // experimental kind 254
      0x00,
      0x00, // EOL + padding
    ));
    assertEquals(r.options.map((o) => o.kind), [2, 1, 3, 4, 8, 5, 254, 0, 0]);
    assertEquals(r.mss, 1460);
    assertEquals(r.wscale, 7);
    assertEquals(r.sackPermitted, true);
    assertEquals(r.timestamps, { value: 1, echo: 2 });
    assertEquals(r.sack, [[10, 20]]);
    assertEquals(Array.from(r.options[6].data), [0xab, 0xcd]);
    assertEquals(r.malformed, false);
  });
  const bad: [string, Uint8Array, number[]][] = [
    ["length 0", b(0x02, 0x00, 0x05, 0xb4), [2]],
    ["length 1", b(0x01, 0x08, 0x01), [1, 8]],
    ["length overruns", b(0x08, 0x0a, 0, 0), [8]],
    ["kind without length byte", b(0x01, 0x02), [1, 2]],
  ];
  for (const [name, area, kinds] of bad) {
    await t.step(`malformed: ${name}`, () => {
      const r = parseTcpOptions(area);
      assertEquals(r.options.map((o) => o.kind), kinds);
      assertEquals(r.malformed, true);
      assertEquals(r.options[r.options.length - 1].malformed, true);
    });
  }
  await t.step("wrong-size MSS/WS are listed but give no value", () => {
    const r = parseTcpOptions(b(0x02, 0x03, 0x05, 0x03, 0x04, 0x01, 0x02));
    assertEquals(r.options.map((o) => o.kind), [2, 3]);
    assertEquals(r.mss, undefined);
    assertEquals(r.wscale, undefined);
  });
  await t.step("empty area", () => assertEquals(parseTcpOptions(b()).options, []));
});
