import { createHash } from "node:crypto";
import { assert, assertEquals } from "../testing/asserts.ts";
import { hash12, hash12Pure, setSha256Blocks, sha256Hex } from "../fingerprint/sha.ts";
import { libcryptoSha256, useLibcryptoSha256 } from "./sha256.ts";

Deno.test("SHA-256 through libcrypto: the same digests as node:crypto and the TypeScript rounds", async (t) => {
  // Debian's nginx (and every TLS server) brings libcrypto: the agent's hosts have it.
  const name = useLibcryptoSha256();
  assert(name?.startsWith("libcrypto.so."), `libcrypto installed (${name})`);
  const blocks = libcryptoSha256();
  assert(blocks !== undefined);
  // Every length across the padding boundaries of 1–5 blocks, long inputs, and non-ASCII.
  const inputs: string[] = [];
  for (let n = 0; n <= 330; n++) {
    inputs.push("abcdefghijklmnopqrstuvwxyz0123456789,_-=;".repeat(9).slice(0, n));
  }
  inputs.push("é€漢字 cookie=☃", "v".repeat(65_535), "w".repeat(70_000));
  await t.step("each input", () => {
    for (const s of inputs) {
      const want = createHash("sha256").update(s).digest("hex");
      assertEquals(sha256Hex(s), want, `${s.length} chars`);
      assertEquals(hash12(s, false), s === "" ? "000000000000" : want.slice(0, 12), `${s.length} chars`);
      if (s !== "") assertEquals(hash12Pure(s), want.slice(0, 12));
    }
  });
  await t.step("the block function alone starts each message from the initial state", () => {
    // Two different messages through the same context, in turn: nothing carries over.
    for (const s of ["a", "b".repeat(200), "a"]) {
      assertEquals(sha256Hex(s), createHash("sha256").update(s).digest("hex"));
    }
  });
  await t.step("uninstalled: the TypeScript rounds again, same digests", () => {
    setSha256Blocks(undefined);
    try {
      for (const s of ["x", "y".repeat(100)]) {
        assertEquals(hash12(s, false), createHash("sha256").update(s).digest("hex").slice(0, 12));
      }
    } finally {
      setSha256Blocks(blocks);
    }
  });
});
