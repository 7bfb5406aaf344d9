/**
 * Long fuzz run of the pure parsers (TLS reader + hello parsers, HTTP/1 stream, TCP options), with the same
 * targets and mutators as the property test:
 *   deno run -A scripts/fuzz.ts --runs 1000000 [--seed N]
 * Prints, per parser: inputs run, uncaught exceptions (must be 0), split≠unsplit mismatches, the slowest
 * input, and the peak RSS. Exits 1 if any exception or mismatch was seen.
 */
import fc from "fast-check";
import { http1Target, loadSeeds, mutated, splitAt, tcpTarget, tlsTarget } from "../src/parse/fuzz_targets.ts";

function flag(name: string, def: number): number {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : def;
}
const runs = flag("--runs", 100_000);
const seed0 = flag("--seed", Date.now() % 1_000_000);
const BATCH = 5_000;
const seeds = await loadSeeds();
const cutsArb = fc.array(fc.nat({ max: 4096 }), { maxLength: 6 });

interface Report {
  parser: string;
  inputs: number;
  exceptions: number;
  mismatches: number;
  maxMs: number;
  firstError?: string;
}

function run(
  parser: string,
  arb: fc.Arbitrary<Uint8Array>,
  target: (pushes: Uint8Array[]) => string[] | string,
  checkSplit: boolean,
): Report {
  const rep: Report = { parser, inputs: 0, exceptions: 0, mismatches: 0, maxMs: 0 };
  const pair = fc.tuple(arb, cutsArb);
  for (let done = 0, batch = 0; done < runs; batch++) {
    const n = Math.min(BATCH, runs - done);
    const sample = fc.sample(pair, { numRuns: n, seed: seed0 + batch });
    for (const [bytes, cuts] of sample) {
      const t0 = performance.now();
      try {
        const whole = target([bytes]);
        if (checkSplit) {
          const split = target(splitAt(bytes, cuts));
          if (String(whole) !== String(split)) rep.mismatches++;
        }
      } catch (e) {
        rep.exceptions++;
        rep.firstError ??= `${e instanceof Error ? e.stack : e} on ${
          Array.from(bytes.subarray(0, 64), (x) => x.toString(16).padStart(2, "0")).join("")
        }`;
      }
      const dt = performance.now() - t0;
      if (dt > rep.maxMs) rep.maxMs = dt;
    }
    done += n;
    rep.inputs = done;
    peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
  }
  return rep;
}

let peakRss = Deno.memoryUsage().rss;
const t0 = performance.now();
const reports = [
  run("tls", mutated(seeds.tls), tlsTarget, true),
  run("http1", mutated(seeds.http), http1Target, true),
  run("tcp_options", mutated(seeds.tcp, 60), (p) => tcpTarget(p[0]), false),
];
const secs = (performance.now() - t0) / 1000;
let bad = 0;
for (const r of reports) {
  bad += r.exceptions + r.mismatches;
  console.log(
    `${r.parser.padEnd(12)} inputs=${r.inputs} exceptions=${r.exceptions} split_mismatches=${r.mismatches} ` +
      `max_ms_per_input=${r.maxMs.toFixed(3)}`,
  );
  if (r.firstError) console.log(`  first error: ${r.firstError}`);
}
console.log(`seed=${seed0} elapsed_s=${secs.toFixed(1)} peak_rss_mib=${(peakRss / 2 ** 20).toFixed(1)}`);
Deno.exit(bad === 0 ? 0 : 1);
