/**
 * Long fuzz run of every parser fed by the network or a file, with the same targets and mutators as the
 * property test (src/parse/fuzz_targets.ts): TLS reader + hello parsers, HTTP/1, TCP options, HPACK,
 * Huffman, HTTP/2, packet decoding, pcap/pcapng through the whole offline mode, TLS decryption, the BPF
 * event decoder and the stream assembler.
 *   nice -n 19 deno run -A scripts/fuzz.ts --runs 1000000 [--seed N] [--only pcap,hpack]
 * Prints, per target: inputs run, crashes (exceptions other than the parser's typed errors; must be 0),
 * broken invariants (split ≠ unsplit, round trips; must be 0), the mean and the slowest time per input and
 * the biggest input; then the peak RSS. Exits 1 if any crash or broken invariant was seen.
 */
import fc from "fast-check";
import { check, cutsArb, loadSeeds, type Target, targets } from "../src/parse/fuzz_targets.ts";

function flag(name: string): string | undefined {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}
const runs = Number(flag("--runs") ?? 100_000);
const seed0 = Number(flag("--seed") ?? Date.now() % 1_000_000);
const only = flag("--only")?.split(",");
const BATCH = 5_000;

interface Report {
  target: string;
  inputs: number;
  crashes: number;
  invariants: number;
  totalMs: number;
  maxMs: number;
  maxBytes: number;
  firstError?: string;
}

const hex = (b: Uint8Array) => Array.from(b.subarray(0, 64), (x) => x.toString(16).padStart(2, "0")).join("");

function run(t: Target): Report {
  const rep: Report = {
    target: t.name,
    inputs: 0,
    crashes: 0,
    invariants: 0,
    totalMs: 0,
    maxMs: 0,
    maxBytes: 0,
  };
  const pair = fc.tuple(t.arb, cutsArb);
  for (let done = 0, batch = 0; done < runs; batch++) {
    const n = Math.min(BATCH, runs - done);
    // Inputs are generated a batch at a time, so the timings below are the parser's alone.
    const sample = fc.sample(pair, { numRuns: n, seed: seed0 + batch });
    for (const [bytes, cuts] of sample) {
      const t0 = performance.now();
      const bad = check(t, bytes, cuts);
      const dt = performance.now() - t0;
      rep.totalMs += dt;
      if (dt > rep.maxMs) rep.maxMs = dt;
      if (bytes.length > rep.maxBytes) rep.maxBytes = bytes.length;
      if (bad) {
        if (bad.kind === "crash") rep.crashes++;
        else rep.invariants++;
        const e = bad.error;
        rep.firstError ??= `${bad.kind}: ${e instanceof Error ? e.stack : e} on ${bytes.length} bytes ${
          hex(bytes)
        }…`;
      }
    }
    done += n;
    rep.inputs = done;
    peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
  }
  return rep;
}

let peakRss = Deno.memoryUsage().rss;
const t0 = performance.now();
const seeds = await loadSeeds();
let bad = 0;
for (const t of targets(seeds)) {
  if (only && !only.includes(t.name)) continue;
  const r = run(t);
  bad += r.crashes + r.invariants;
  console.log(
    `${r.target.padEnd(12)} inputs=${r.inputs} crashes=${r.crashes} broken_invariants=${r.invariants} ` +
      `mean_us=${(1000 * r.totalMs / r.inputs).toFixed(1)} max_ms=${
        r.maxMs.toFixed(2)
      } max_bytes=${r.maxBytes}`,
  );
  if (r.firstError) console.log(`  first error: ${r.firstError}`);
}
const secs = (performance.now() - t0) / 1000;
console.log(`seed=${seed0} elapsed_s=${secs.toFixed(1)} peak_rss_mib=${(peakRss / 2 ** 20).toFixed(1)}`);
Deno.exit(bad === 0 ? 0 : 1);
