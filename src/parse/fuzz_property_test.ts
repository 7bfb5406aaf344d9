import fc from "fast-check";
import { loadSeeds, properties } from "./fuzz_targets.ts";

// A fast slice (~10k inputs) of the fuzzing scripts/fuzz.ts does; any thrown exception fails the property.
const seeds = await loadSeeds();
const p = properties(seeds);

Deno.test("parser properties (fast-check)", async (t) => {
  await t.step(
    "TLS reader + hello parsers never throw (3000)",
    () => fc.assert(p.tlsNeverThrows, { numRuns: 3000 }),
  );
  await t.step(
    "TLS split anywhere == unsplit (500)",
    () => fc.assert(p.tlsSplitEqualsUnsplit, { numRuns: 500 }),
  );
  await t.step("HTTP/1 stream never throws (3000)", () => fc.assert(p.http1NeverThrows, { numRuns: 3000 }));
  await t.step(
    "HTTP/1 split anywhere == unsplit (1000)",
    () => fc.assert(p.http1SplitEqualsUnsplit, { numRuns: 1000 }),
  );
  await t.step("TCP options never throw (3000)", () => fc.assert(p.tcpNeverThrows, { numRuns: 3000 }));
});
