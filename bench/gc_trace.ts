/**
 * Sums V8's `--trace-gc-nvp` lines (one JSON object per collection) of a running agent: scavenges and
 * mark-compacts per second, their main-thread pauses, and the bytes allocated, surviving a scavenge and
 * promoted per second. What a change to allocation or object lifetimes does to the collector, from one run.
 *
 *   deno run -A bench/soak.ts --minutes 3 --browser --clickhouse --v8-flags=--trace-gc-nvp --agent-stdout gc.txt
 *   deno run -A bench/gc_trace.ts gc.txt [--from-s 30]
 *
 * --from-s: collections before this many seconds after start are left out (start-up, the JIT's warm-up).
 */
import { parseArgs } from "node:util";

export interface GcSummary {
  seconds: number;
  scavengesPerS: number;
  scavengePauseMs: number;
  scavengePauseMsPerS: number;
  markCompacts: number;
  markCompactPauseMsPerS: number;
  allocatedMBPerS: number;
  survivedMBPerS: number;
  promotedMBPerS: number;
}

/** The summary of a trace's text (lines that are not a collection's are skipped). */
export function summarize(text: string, fromMs = 30_000): GcSummary {
  let first = NaN, last = NaN, scav = 0, scavPause = 0, mc = 0, mcPause = 0;
  let allocated = 0, survived = 0, promoted = 0;
  for (const line of text.split("\n")) {
    const m = /\s(\d+) ms: GC: (\{.*\})\s*$/.exec(line);
    if (!m) continue;
    const t = Number(m[1]);
    if (t < fromMs) continue;
    let d: Record<string, number | string>;
    try {
      d = JSON.parse(m[2]);
    } catch {
      continue;
    }
    if (Number.isNaN(first)) first = t;
    last = t;
    const pause = Number(d.pause ?? 0);
    if (d.gc === "s") {
      scav++;
      scavPause += pause;
      allocated += Number(d.allocated ?? 0);
      survived += Number(d.new_space_survived ?? 0);
      promoted += Number(d.promoted ?? 0);
    } else {
      mc++;
      mcPause += pause;
    }
  }
  const s = (last - first) / 1000;
  return {
    seconds: s,
    scavengesPerS: scav / s,
    scavengePauseMs: scavPause / scav,
    scavengePauseMsPerS: scavPause / s,
    markCompacts: mc,
    markCompactPauseMsPerS: mcPause / s,
    allocatedMBPerS: allocated / s / 1e6,
    survivedMBPerS: survived / s / 1e6,
    promotedMBPerS: promoted / s / 1e6,
  };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { "from-s": { type: "string", default: "30" } },
  });
  for (const f of positionals) {
    const r = summarize(await Deno.readTextFile(f), Number(values["from-s"]) * 1000);
    console.log(f, JSON.stringify(r, (_k, v) => typeof v === "number" ? Math.round(v * 1000) / 1000 : v));
  }
}
