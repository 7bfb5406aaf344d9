/**
 * Kernel-side cost of the agent's BPF programs, for the benchmarks: with `kernel.bpf_stats_enabled` on, the
 * kernel counts each program's runs and the time spent in it (`run_cnt`, `run_time_ns` in `bpftool prog
 * show`). The time is that of the program body only; the tracepoint or uprobe machinery around it comes on
 * top (it shows in the traced process's system time).
 */
import { bpfProgIds } from "../tests/helpers/agent.ts";

export interface ProgCounters {
  name: string;
  runs: number;
  ns: number;
}

/** Turns the kernel's per-program run statistics on; returns a function that puts the old setting back. */
export function enableBpfStats(): () => void {
  const path = "/proc/sys/kernel/bpf_stats_enabled";
  const old = Deno.readTextFileSync(path).trim();
  Deno.writeTextFileSync(path, "1");
  return () => Deno.writeTextFileSync(path, old);
}

/** Run counters of the programs a process holds (program and link fds), by program id. */
export function progCounters(pid: number): Map<number, ProgCounters> {
  const ids = new Set(bpfProgIds(pid));
  const out = new Map<number, ProgCounters>();
  if (ids.size === 0) return out;
  const r = new Deno.Command("bpftool", { args: ["-j", "prog", "show"], stderr: "null" }).outputSync();
  const all = JSON.parse(new TextDecoder().decode(r.stdout) || "[]") as {
    id: number;
    name?: string;
    run_cnt?: number;
    run_time_ns?: number;
  }[];
  for (const p of all) {
    if (!ids.has(p.id)) continue;
    out.set(p.id, { name: p.name ?? `prog${p.id}`, runs: p.run_cnt ?? 0, ns: p.run_time_ns ?? 0 });
  }
  return out;
}

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
