/**
 * Long fuzz run of every parser fed by the network or a file, with the same targets and mutators as the
 * property test (src/parse/fuzz_targets.ts): TLS reader + hello parsers, HTTP/1, TCP options, HPACK,
 * Huffman, HTTP/2, packet decoding, pcap/pcapng through the whole offline mode, TLS decryption, the BPF
 * event decoder and the stream assembler.
 *   nice -n 19 deno run -A scripts/fuzz.ts --runs 1000000 [--seed N] [--only pcap,hpack]
 * Prints, per target: inputs run, crashes (exceptions other than the parser's typed errors; must be 0),
 * broken invariants (split ≠ unsplit, round trips; must be 0), the mean time per input, the worst (the
 * 32 slowest and 8 largest inputs re-run alone, best of 5: wall-clock maxima on a shared machine are mostly pauses) and the
 * biggest input; then the peak RSS. Exits 1 if any crash or broken invariant was seen.
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
  /** Slowest wall time seen for one input (includes GC pauses and the process being descheduled). */
  maxMs: number;
  /** The slowest inputs re-timed alone (best of RETIME runs each): the worst cost of one input. */
  worstMs: number;
  worstBytes: number;
  maxBytes: number;
  firstError?: string;
}

/** How many of the slowest inputs are kept and re-timed, and how often each. */
const KEEP = 32;
const RETIME = 5;

const hex = (b: Uint8Array) => Array.from(b.subarray(0, 64), (x) => x.toString(16).padStart(2, "0")).join("");

function run(t: Target): Report {
  const rep: Report = {
    target: t.name,
    inputs: 0,
    crashes: 0,
    invariants: 0,
    totalMs: 0,
    maxMs: 0,
    worstMs: 0,
    worstBytes: 0,
    maxBytes: 0,
  };
  const slowest: { ms: number; bytes: Uint8Array; cuts: number[] }[] = [];
  const largest: { ms: number; bytes: Uint8Array; cuts: number[] }[] = [];
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
      if (slowest.length < KEEP || dt > slowest[slowest.length - 1].ms) {
        slowest.push({ ms: dt, bytes, cuts });
        slowest.sort((a, b) => b.ms - a.ms);
        if (slowest.length > KEEP) slowest.pop();
      }
      if (largest.length < KEEP / 4 || bytes.length > largest[largest.length - 1].bytes.length) {
        largest.push({ ms: dt, bytes, cuts });
        largest.sort((a, b) => b.bytes.length - a.bytes.length);
        if (largest.length > KEEP / 4) largest.pop();
      }
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
  // Wall times above include pauses that are not the input's doing (GC, other processes on a shared
  // machine): the slowest and the largest inputs are run again alone and the best of RETIME runs is
  // their cost.
  for (const s of [...slowest, ...largest]) {
    let best = Infinity;
    for (let i = 0; i < RETIME; i++) {
      const t0 = performance.now();
      check(t, s.bytes, s.cuts);
      best = Math.min(best, performance.now() - t0);
    }
    if (best > rep.worstMs) [rep.worstMs, rep.worstBytes] = [best, s.bytes.length];
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
      `mean_us=${(1000 * r.totalMs / r.inputs).toFixed(1)} worst_ms=${r.worstMs.toFixed(2)} ` +
      `(${r.worstBytes} bytes) max_wall_ms=${r.maxMs.toFixed(2)} max_bytes=${r.maxBytes}`,
  );
  if (r.firstError) console.log(`  first error: ${r.firstError}`);
}
const secs = (performance.now() - t0) / 1000;
console.log(`seed=${seed0} elapsed_s=${secs.toFixed(1)} peak_rss_mib=${(peakRss / 2 ** 20).toFixed(1)}`);
Deno.exit(bad === 0 ? 0 : 1);
