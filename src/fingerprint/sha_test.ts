import { createHash } from "node:crypto";
import { assertEquals } from "../testing/asserts.ts";
import { clearHash12Cache, hash12, hash12Pure, sha256Hex } from "./sha.ts";
import { hash12Node } from "../../tests/helpers/hash.ts";

Deno.test("sha256 / hash12", async (t) => {
  await t.step("empty string is all zeros (JA4+ rule)", () => assertEquals(hash12(""), "000000000000"));
  await t.step("spec example: sorted ciphers → 8daaf6152771", () => {
    assertEquals(
      hash12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
      "8daaf6152771",
    );
  });
  // Lengths around the padding boundaries (55/56/64 bytes) and multi-block inputs, plus non-ASCII.
  const inputs = [
    "a",
    "abc",
    "x".repeat(55),
    "x".repeat(56),
    "x".repeat(63),
    "x".repeat(64),
    "x".repeat(119),
    "y".repeat(1000),
    "é€漢字",
    "z".repeat(70000),
  ];
  for (const s of inputs) {
    await t.step(`pure == node:crypto for ${s.length} chars`, () => {
      const want = createHash("sha256").update(s).digest("hex");
      assertEquals(sha256Hex(s), want);
      assertEquals(hash12Pure(s), want.slice(0, 12));
      assertEquals(hash12Node(s), want.slice(0, 12));
      assertEquals(hash12(s), want.slice(0, 12));
    });
  }
  await t.step("memo: hits, overflow past the bound and clearing keep results exact", () => {
    clearHash12Cache();
    for (let round = 0; round < 2; round++) {
      // 5000 distinct inputs overflow the 4096-entry memo once; the second round mixes hits and misses.
      for (let i = 0; i < 5000; i += 7) {
        const s = `${i.toString(16).padStart(4, "0")},1301,1302`;
        assertEquals(hash12(s), hash12Node(s));
      }
    }
    clearHash12Cache();
    assertEquals(hash12("abc"), hash12Node("abc"));
  });
});
