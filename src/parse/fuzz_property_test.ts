import fc from "fast-check";
import { check, loadSeeds, properties, targets } from "./fuzz_targets.ts";
import { assert, assertEquals } from "../testing/asserts.ts";

// A fast slice of what scripts/fuzz.ts runs (a million inputs per target there): every parser fed by the
// network or a file, mutated real inputs, no exception other than the parser's typed errors, no broken
// invariant (split == unsplit for stream parsers, round trips, bytes in place).
const seeds = await loadSeeds();
const p = properties(seeds);
const RUNS: Record<string, number> = { pcap: 300, tls_decrypt: 300, http2: 1000 };

Deno.test("parser properties (fast-check)", async (t) => {
  for (const [name, prop] of Object.entries(p)) {
    const numRuns = RUNS[name] ?? 2000;
    await t.step(`${name} (${numRuns})`, () => fc.assert(prop, { numRuns }));
  }
});

Deno.test("fuzz targets see their seeds work, and count a swallowed exception as a crash", () => {
  for (const t of targets(seeds)) {
    assertEquals(check(t, new Uint8Array(0), []), null, t.name);
  }
  // The seeds produce something (so mutations start from inputs that reach deep into each parser).
  const byName = Object.fromEntries(targets(seeds).map((t) => [t.name, t]));
  assert(byName.pcap.run(seeds.pcap[9], []).includes('"http"'), "pcap seed with keys yields http records");
  assert(/[1-9]\d*\//.test(byName.tls_decrypt.run(seeds.tlsSession[0], [])), "session seed decrypts");
  assert(byName.http2.run(seeds.http2[0], []).includes("GET"), "http2 seed yields a request");
  assertEquals(byName.event.run(seeds.event[0], []), "data");
  assertEquals(byName.event.run(new Uint8Array(3), []), "error:short");
  // A TypeError inside a target is a crash, an InvariantError is not.
  const broken = { ...byName.packet, run: () => (null as unknown as string).trim() };
  assertEquals(check(broken, new Uint8Array(1), [])?.kind, "crash");
});
