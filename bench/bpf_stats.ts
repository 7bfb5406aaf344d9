/**
 * Kernel-side cost of the agent's BPF programs, for the benchmarks: with `kernel.bpf_stats_enabled` on, the
 * kernel counts each program's runs and the time spent in it (`run_cnt`, `run_time_ns` in `bpftool prog
 * show`). The time is that of the program body only; the tracepoint or uprobe machinery around it comes on
 * top (it shows in the traced process's system time).
 */
// Shared with the tests (tests/helpers/agent.ts), which check programs are (not) attached by their run counts.
export { enableBpfStats, type ProgCounters, progCounters } from "../tests/helpers/agent.ts";
import type { ProgCounters } from "../tests/helpers/agent.ts";

export interface ProgCost {
  name: string;
  runsPerRequest: number;
  nsPerRun: number;
  nsPerRequest: number;
}

/** Per-program cost between two snapshots, per request, by program name (ids of one name summed). */
export function progCosts(
  before: Map<number, ProgCounters>,
  after: Map<number, ProgCounters>,
  requests: number,
): ProgCost[] {
  const byName = new Map<string, { runs: number; ns: number }>();
  for (const [id, a] of after) {
    const b = before.get(id) ?? { runs: 0, ns: 0 };
    const acc = byName.get(a.name) ?? { runs: 0, ns: 0 };
    acc.runs += a.runs - b.runs;
    acc.ns += a.ns - b.ns;
    byName.set(a.name, acc);
  }
  return [...byName].filter(([, v]) => v.runs > 0).map(([name, v]) => ({
    name,
    runsPerRequest: v.runs / Math.max(requests, 1),
    nsPerRun: v.ns / v.runs,
    nsPerRequest: v.ns / Math.max(requests, 1),
  })).sort((x, y) => y.nsPerRequest - x.nsPerRequest);
}
