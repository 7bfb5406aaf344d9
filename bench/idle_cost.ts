/**
 * What the agent costs while its servers are idle: CPU per second of an agent watching an nginx that serves
 * nothing (its timers, its ring polls, its /proc scans), per thread from /proc/PID/task/TID/schedstat (ns, not
 * the 10 ms ticks of /proc/PID/stat). With --base, an earlier checkout's agent in the same rounds (this, base;
 * then reversed), so both see the same machine. Every wake-up of an idle process costs tens of µs on bare metal
 * and about 100 µs in a VM (a bare Deno `setInterval` at 10 Hz: ~2 ms/s here), so the count of wake-ups
 * decides most of this figure.
 *
 *   deno run -A bench/idle_cost.ts [--seconds 30] [--rounds 2] [--base OTHER_CHECKOUT]
 *
 * Hold the machine lock while it runs.
 */
import { parseArgs } from "node:util";
import { AGENT_V8_FLAGS, checkoutAgent, startAgent } from "../tests/helpers/agent.ts";
import { startNginx } from "../tests/helpers/servers.ts";
import { delay, requireRoot } from "../tests/helpers/proc.ts";
import { median } from "./median.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "30" },
    rounds: { type: "string", default: "2" },
    base: { type: "string" },
  },
});
requireRoot("the idle benchmark (the agent loads BPF programs)");
const seconds = Number(values.seconds);
const base = values.base?.replace(/\/$/, "");
const PORT = 22092;

/** CPU ns per thread name (threads of one name summed). */
function threadNs(pid: number): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const comm = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/comm`).trim();
      const ns = Number(Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/schedstat`).split(" ")[0]);
      m.set(comm, (m.get(comm) ?? 0) + ns);
    } catch { /* the thread ended */ }
  }
  return m;
}

type Variant = "this" | "base";
const variants: Variant[] = base ? ["this", "base"] : ["this"];
const total: Record<Variant, number[]> = { this: [], base: [] };
const perThread: Record<Variant, Map<string, number[]>> = { this: new Map(), base: new Map() };
await using _nginx = await startNginx({ port: PORT, workers: 1 });
for (let round = 0; round < Number(values.rounds); round++) {
  for (const v of round % 2 ? [...variants].reverse() : variants) {
    await using agent = await startAgent({
      metricsPort: 22442,
      // Production defaults, as the capture benchmark runs them; this nginx's port only.
      config: {
        uprobes: { max_retries: 30, retry_interval_sec: 2 },
        capture: { hold_ms: 2000, ports: [PORT] },
        output: { file: { max_size_mb: 1048576, max_files: 1 }, clickhouse: { spool_dir: "" } },
        metrics: { enabled: true },
      },
      readyTimeoutMs: 90_000,
      ...(v === "base" ? checkoutAgent(base!) : { v8Flags: AGENT_V8_FLAGS }),
    });
    await delay(5000); // past start-up (the first scans, the attach log)
    const a = threadNs(agent.pid);
    await delay(seconds * 1000);
    const b = threadNs(agent.pid);
    let sum = 0;
    for (const [name, ns] of b) {
      const msPerS = (ns - (a.get(name) ?? 0)) / 1e6 / seconds;
      sum += msPerS;
      const xs = perThread[v].get(name) ?? perThread[v].set(name, []).get(name)!;
      xs.push(msPerS);
    }
    total[v].push(sum);
    console.error(`round ${round + 1}: ${v} ${sum.toFixed(2)} ms/s`);
  }
}

console.log(`\nIdle agent CPU, ms per second (${values.rounds} rounds of ${seconds} s, median)`);
console.log("| agent | all threads | by thread | vs this |");
console.log("| --- | ---: | --- | ---: |");
for (const v of variants) {
  const m = median(total[v]);
  const threads = [...perThread[v]].map(([k, xs]) => `${k} ${median(xs).toFixed(2)}`).join(", ");
  console.log(`| ${v} | ${m.toFixed(2)} | ${threads} | ${(m / median(total.this)).toFixed(2)}× |`);
}
