/**
 * The whole row pipeline as the agent runs it, minus the kernel: synthetic BPF ring-buffer records (built
 * from layout.gen.ts) → Agent.onRecord (decodeEvent → PacketTracker / RequestTracker → JA4T, JA4, JA4H →
 * Correlator) → Correlator.tick → ClickHouseSink (JSONEachRow → hash → gzip → spool → HTTP insert) → a real
 * clickhouse-server. Goal: ≥ 100k rows/s on one core, RSS ≤ 150 MB at that rate.
 *
 *   deno run -A bench/pipeline_bench.ts [--seconds=15] [--modes=max,10000,50000]
 *
 * Each mode runs in its own child process (so one mode's heap does not inflate the next one's RSS) with the
 * V8 flags the packaged agent uses. Throughput is rows per second of the agent process's CPU time (all its
 * threads: JS, gzip pool, HTTP client), not wall time: the machine may be shared. Per-stage figures are CPU
 * time of the JS thread only (/proc/thread-self/schedstat).
 */
import { Agent } from "../src/agent/agent.ts";
import type { AttachPlan } from "../src/bpf/plan.ts";
import { Traffic } from "./traffic.ts";

const te = new TextEncoder();
import { DEFAULT_CONFIG } from "../src/config/config.ts";
import { encodeLineOpen } from "../src/sink/ch_schema.ts";
import { ClickHouseSink } from "../src/sink/clickhouse.ts";
import type { Row } from "../src/sink/row.ts";
import { setLogSink } from "../src/log.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";
import { gzipSync } from "node:zlib";
import process from "node:process";

const GOAL = 100_000;
// As the agent is shipped (scripts/agent-v8-flags); --v8=… overrides.
const V8_FLAGS = Deno.readTextFileSync(new URL("../scripts/agent-v8-flags", import.meta.url)).trim().split(
  /\s+/,
)
  .join(",");

// ---------------------------------------------------------------------------------------------------------
// One mode, in a child process.

/** CPU ns of the calling (JS) thread. */
function threadNs(): number {
  return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]);
}

function processCpuS(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface ModeResult {
  mode: string;
  rate: number | null;
  seconds: number;
  generated: number;
  /** Rows per wall second actually offered (below `rate` when the machine withheld the CPU). */
  offeredRate: number;
  emitted: number;
  landed: number;
  dropped: Record<string, number>;
  /** Process CPU seconds (all threads) from start to drained, minus the record generator's. */
  cpuS: number;
  wallS: number;
  rowsPerCpuS: number;
  rssStartMiB: number;
  rssPeakMiB: number;
  rssMedianMiB: number;
  heapPeakMiB: number;
  stagesNsPerRow: Record<string, number>;
  threads: Record<string, number>;
  correlator: { held_peak: number; released_timeout: number; released_overflow: number };
  drained: boolean;
}

function threadCpu(): Record<string, number> {
  const out: Record<string, number> = {};
  const tick = 100; // USER_HZ
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const s = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const comm = s.slice(s.indexOf("(") + 1, s.lastIndexOf(")")).replace(/[-_ ]?\d+$/, "");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      const cpu = (Number(f[11]) + Number(f[12])) / tick;
      out[comm] = Math.round(((out[comm] ?? 0) + cpu) * 100) / 100;
    } catch { /* thread ended */ }
  }
  return out;
}

async function runMode(url: string, mode: string, seconds: number): Promise<ModeResult> {
  const rate = mode === "max" ? null : Number(mode);
  const table = `bench_${mode}`;
  const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-bench-" });
  setLogSink(() => {});
  const cfg = structuredClone(DEFAULT_CONFIG);
  const sink = await ClickHouseSink.open({
    config: { ...cfg.output.clickhouse, url, table, spool_dir: spool },
  });
  const agent = new Agent(cfg, { rowHook: () => {} });
  // Agent.start() would plan real hooks; the dispatch only needs to know which method nginx uses.
  agent.kernel.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
  // Half the connections plain HTTP (their rows wait hold_ms for a hello that never comes), 4 requests each.
  const traffic = new Traffic({ requestsPerConn: 4, tlsShare: 0.5 });
  // generate is the bench's own work (building records): subtracted from the agent's CPU time.
  const stage = { generate: 0, decode_correlate: 0, tick: 0, sink_write: 0 };
  let emitted = 0;
  let heldPeak = 0;

  const pump = () => {
    let t = threadNs();
    const rows = agent.correlator.tick(Date.now());
    const t2 = threadNs();
    stage.tick += t2 - t;
    heldPeak = Math.max(heldPeak, agent.correlator.stats().held);
    if (rows.length) {
      emitted += rows.length;
      sink.write(rows as Row[]);
      t = threadNs();
      stage.sink_write += t - t2;
    }
  };
  const feed = (n: number) => {
    const recs: Uint8Array[] = [];
    let rows = 0;
    const t0 = threadNs();
    while (rows < n) rows += traffic.connection(recs);
    const t = threadNs();
    stage.generate += t - t0;
    for (const r of recs) agent.onRecord(r);
    stage.decode_correlate += threadNs() - t;
  };

  // Warm-up (JIT, connect, table creation) outside the measurement.
  for (let i = 0; i < 20; i++) feed(1000);
  await new Promise((r) => setTimeout(r, 2500));
  pump();
  if (!(await sink.drain(60_000))) throw new Error("warm-up did not drain: is clickhouse-server up?");
  const base = await countRows(url, table);
  traffic.rows = 0;
  emitted = 0;
  heldPeak = 0;
  for (const k of Object.keys(stage) as (keyof typeof stage)[]) stage[k] = 0;
  const threads0 = threadCpu();

  const rss: number[] = [];
  let heapPeak = 0;
  const sampler = setInterval(() => {
    const m = Deno.memoryUsage();
    rss.push(m.rss);
    heapPeak = Math.max(heapPeak, m.heapTotal);
    if (Deno.env.get("BENCH_TRACE") && rss.length % 10 === 0) {
      const cs = agent.correlator.stats();
      console.error(
        `t=${rss.length / 5}s rss=${m.rss >> 20} heapUsed=${m.heapUsed >> 20} rows=${traffic.rows} ` +
          `held=${cs.held} conns=${cs.connections} flows=${agent.packets.stats().flows} ` +
          `sink=${
            JSON.stringify({ b: sink.stats().buffered, s: sink.stats().spooled, d: sink.stats().dropped })
          }`,
      );
    }
  }, 200);
  const rssStart = Deno.memoryUsage().rss;
  const cpu0 = processCpuS();
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let lastPump = t0;
  let budget = 0;
  let prev = t0;
  while (performance.now() < end) {
    const now = performance.now();
    if (rate === null) feed(2000);
    else {
      // No catch-up bursts: when the machine withholds the CPU, the offered rate falls behind (reported as
      // the achieved rate) instead of arriving later as one huge burst that would measure the burst.
      budget += rate * Math.min(now - prev, 20) / 1000;
      const before = traffic.rows;
      if (budget >= 1) feed(Math.floor(budget));
      budget -= traffic.rows - before;
    }
    // The agent ticks the correlator every 100 ms.
    if (now - lastPump >= 100) {
      pump();
      lastPump = now;
    }
    prev = now;
    await new Promise((r) => setTimeout(r, rate === null ? 0 : 10));
  }
  const offeredS = (performance.now() - t0) / 1000;
  // Close out: release what the correlator holds, then wait for ClickHouse to acknowledge everything.
  const rest = agent.correlator.flush();
  emitted += rest.length;
  sink.write(rest);
  const drained = await sink.drain(180_000);
  const cpuS = processCpuS() - cpu0 - stage.generate / 1e9;
  const wallS = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const st = sink.stats();
  await sink.close();
  const landed = (await countRows(url, table)) - base;
  const threads1 = threadCpu();
  const threads: Record<string, number> = {};
  for (const [k, v] of Object.entries(threads1)) {
    threads[k] = Math.round((v - (threads0[k] ?? 0)) * 100) / 100;
  }
  await Deno.remove(spool, { recursive: true }).catch(() => {});
  const sorted = [...rss].sort((a, b) => a - b);
  const cs = agent.correlator.stats();
  const mib = (b: number) => Math.round(b / 2 ** 20);
  return {
    mode,
    rate,
    seconds,
    generated: traffic.rows,
    offeredRate: Math.round(traffic.rows / offeredS),
    emitted,
    landed,
    dropped: st.dropped,
    cpuS: Math.round(cpuS * 100) / 100,
    wallS: Math.round(wallS * 10) / 10,
    rowsPerCpuS: Math.round(landed / cpuS),
    rssStartMiB: mib(rssStart),
    rssPeakMiB: mib(sorted.at(-1) ?? rssStart),
    rssMedianMiB: mib(sorted[sorted.length >> 1] ?? rssStart),
    heapPeakMiB: mib(heapPeak),
    stagesNsPerRow: Object.fromEntries(
      Object.entries(stage).map(([k, v]) => [k, Math.round(v / Math.max(1, traffic.rows))]),
    ),
    threads,
    correlator: {
      held_peak: heldPeak,
      released_timeout: cs.rows_released_timeout,
      released_overflow: cs.rows_released_overflow,
    },
    drained,
  };
}

async function countRows(url: string, table: string): Promise<number> {
  const r = await fetch(`${url}/?query=${encodeURIComponent(`SELECT count() FROM ja4ebpf.${table}`)}`);
  const t = await r.text();
  return r.ok ? Number(t.trim()) : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Serialization variants, side by side (JS-thread CPU per row; compressed share of the JSON).

function formats(rows: Row[]): string[] {
  const lines = rows.map((r) => encodeLineOpen(r, "legacy") + `,"batch_id":"${"0".repeat(32)}"}`);
  const body = te.encode(lines.join("\n") + "\n");
  const out = [`${rows.length} rows, JSONEachRow ${Math.round(body.length / rows.length)} B/row`];
  for (const level of [0, 1, 6]) {
    const t = threadNs();
    let z: Uint8Array = body;
    for (let i = 0; i < 3; i++) z = level ? gzipSync(body, { level }) : body;
    const ns = (threadNs() - t) / 3 / rows.length;
    out.push(
      level
        ? `gzip -${level}: ${(z.length / body.length).toFixed(3)} of the JSON, ${Math.round(ns)} ns/row`
        : "no compression: 1.000 of the JSON, 0 ns/row",
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const arg = (k: string, d: string) =>
    Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
  if (Deno.args[0] === "--child") {
    const r = await runMode(Deno.args[1], Deno.args[2], Number(Deno.args[3]));
    console.log(JSON.stringify(r));
    Deno.exit(0);
  }
  const seconds = Number(arg("seconds", "15"));
  const modes = arg("modes", "max,10000,50000").split(",");
  const v8 = arg("v8", V8_FLAGS);
  // --ch-ports=HTTP,TCP,INTERSERVER: a server apart from the tests' (they may run meanwhile).
  const chPorts = arg("ch-ports", "").split(",").filter(Boolean).map(Number);
  const ch = await startClickHouse(
    chPorts.length === 3 ? { httpPort: chPorts[0], tcpPort: chPorts[1], interserverPort: chPorts[2] } : {},
  );
  try {
    const load = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
    console.log(`load average before: ${load}; ${navigator.hardwareConcurrency} CPUs; V8 flags ${v8}`);
    const results: ModeResult[] = [];
    for (const mode of modes) {
      const p = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `--v8-flags=${v8}`,
          // --prof-dir=DIR: a V8 CPU profile of each mode's child (bench/stages.ts reads them).
          ...(arg("prof-dir", "") ? ["--cpu-prof", `--cpu-prof-dir=${arg("prof-dir", "")}`] : []),
          new URL(import.meta.url).pathname,
          "--child",
          ch.url,
          mode,
          String(seconds),
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const o = await p.output();
      const out = new TextDecoder().decode(o.stdout).trim().split("\n").at(-1) ?? "";
      if (!o.success || !out.startsWith("{")) {
        console.log(`${mode}: the child failed (exit ${o.code}${o.signal ? ", " + o.signal : ""})`);
        continue;
      }
      const r = JSON.parse(out) as ModeResult;
      results.push(r);
      const label = r.rate === null ? "unpaced" : `paced ${r.rate / 1000}k/s`;
      console.log(
        `${label.padEnd(12)} offered ${r.offeredRate} rows/s; ${r.landed} rows landed of ${r.generated} in ` +
          `${r.wallS} s wall, ` +
          `${r.cpuS} s CPU → ${r.rowsPerCpuS} rows per CPU-second = ${
            (1e6 / r.rowsPerCpuS).toFixed(2)
          } µs of agent CPU per row (goal ≤ 3; ${
            (r.rowsPerCpuS / GOAL).toFixed(2)
          }× the 100k rows/CPU-s goal); ` +
          `RSS start ${r.rssStartMiB} / median ${r.rssMedianMiB} / peak ${r.rssPeakMiB} MiB ` +
          `(V8 heap peak ${r.heapPeakMiB}); dropped ${JSON.stringify(r.dropped)}${
            r.drained ? "" : " [not drained]"
          }`,
      );
      console.log(
        `${"".padEnd(12)} JS thread ns/row ${JSON.stringify(r.stagesNsPerRow)}; thread CPU s ` +
          `${JSON.stringify(r.threads)}; correlator ${JSON.stringify(r.correlator)}`,
      );
    }
    const { testRow } = await import("../tests/helpers/rows.ts");
    for (const l of formats(Array.from({ length: 20_000 }, (_, i) => testRow(i, "fmt")))) console.log(l);
    console.log(
      `load average after: ${Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ")}`,
    );
  } finally {
    await ch.close();
  }
}
