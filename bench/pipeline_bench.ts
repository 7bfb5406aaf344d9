/**
 * The whole row pipeline as the agent runs it, minus the kernel: synthetic BPF ring-buffer records (built
 * from layout.gen.ts) → Agent.onRecord (decodeEvent → PacketTracker / RequestTracker → JA4T, JA4, JA4H →
 * Correlator) → Correlator.tick → privacy filter → ClickHouseSink (RowBinary → gzip → spool → HTTP insert) → a
 * real clickhouse-server. Goal: ≥ 100k rows/s on one core, RSS ≤ 150 MB at that rate.
 *
 *   deno run -A bench/pipeline_bench.ts [--seconds=15] [--modes=max,10000,50000] [--base DIR] [--pairs=1] [--net]
 *
 * --net: per round also the bench alone (the same record generator and loop, an idle sink, no agent), and the
 * agent's CPU per row net of it: what this machine's agent would pay for the rows, without the bench's own
 * records and their garbage (collected on the agent's time otherwise).
 *
 * --base DIR: the same pipeline from another checkout (DIR: its agent, sink and configuration; the record
 * generator is this one's), run alternately with this checkout in ABBA order per mode; a summary gives the
 * medians and their ratio.
 *
 * Each mode runs in its own child process (so one mode's heap does not inflate the next one's RSS) with the
 * V8 flags the packaged agent uses. Throughput is rows per second of the agent process's CPU time (all its
 * threads: JS, gzip pool, HTTP client), not wall time: the machine may be shared. Per-stage figures are CPU
 * time of the JS thread only (/proc/thread-self/schedstat), except privacy and sink_write: wall time of those
 * synchronous calls (the thread's clock advances in scheduler ticks, too coarse for one call).
 */
import type { Agent as AgentT } from "../src/agent/agent.ts";
import type { AttachPlan } from "../src/bpf/plan.ts";
import { Traffic } from "./traffic.ts";

const te = new TextEncoder();
import type { Config } from "../src/config/config.ts";
import { encodeLineOpen } from "../src/sink/ch_schema.ts";
import type { ClickHouseSink as SinkT } from "../src/sink/clickhouse.ts";
import { RowBinaryEncoder, stringBytes } from "../src/sink/ch_rowbinary.ts";
import type { Redactor } from "../src/sink/redact.ts";
import type { Row } from "../src/sink/row.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";
import { gzipSync } from "node:zlib";
import process from "node:process";
import { median } from "./median.ts";

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
  /** "this" or "base" (--base). */
  variant: string;
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
  /** The record generator's timed CPU seconds (JS thread), which cpuS leaves out. */
  genS: number;
  /** A --net calibration run: records generated and dropped, no agent, an idle sink. */
  genOnly: boolean;
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

/** µs of process CPU per generated row, the generator's included (the --net comparison). */
const perRowUs = (r: ModeResult) => (r.cpuS + r.genS) * 1e6 / Math.max(1, r.generated);

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

async function runMode(
  dir: string,
  url: string,
  mode: string,
  seconds: number,
  table: string,
): Promise<Omit<ModeResult, "variant">> {
  // The pipeline of the checkout at `dir` (this one, or --base).
  const { Agent } = await import(`${dir}/src/agent/agent.ts`);
  const { DEFAULT_CONFIG } = await import(`${dir}/src/config/config.ts`);
  const { ClickHouseSink } = await import(`${dir}/src/sink/clickhouse.ts`);
  const { setLogSink } = await import(`${dir}/src/log.ts`);
  const { makeRedactor } = await import(`${dir}/src/sink/mod.ts`);
  const rate = mode === "max" ? null : Number(mode);
  const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-bench-" });
  setLogSink(() => {});
  const cfg = structuredClone(DEFAULT_CONFIG) as Config;
  const sink: SinkT = await ClickHouseSink.open({
    config: { ...cfg.output.clickhouse, url, table, spool_dir: spool },
  });
  // As the agent's outputs: the privacy filter (defaults) in place, then the sink.
  const redactor: Redactor = await makeRedactor(cfg.privacy);
  const agent: AgentT = new Agent(cfg, { rowHook: () => {} });
  // Agent.start() would plan real hooks; the dispatch only needs to know which method nginx uses.
  agent.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
  // As with the ring buffer, the default (Agent.start() sets it from the plan): a closed connection is forgotten
  // at its close. Without it every closed connection lingered (the perf buffer's regime): ~12,000 of them at
  // 10k rows/s, a heap the agent as shipped does not have.
  agent.correlator.opts.orderedEvents = true;
  // Half the connections plain HTTP (their rows wait hold_ms for a hello that never comes), 4 requests each.
  const traffic = new Traffic({ requestsPerConn: 4, tlsShare: 0.5 });
  // generate is the bench's own work (building records): subtracted from the agent's CPU time.
  const stage = { generate: 0, decode_correlate: 0, tick: 0, privacy: 0, sink_write: 0 };
  let emitted = 0;
  let heldPeak = 0;

  // --net calibration: the same loop generating the same records, which nothing reads.
  const genOnly = Deno.env.get("PIPELINE_GEN_ONLY") === "1";
  const pump = () => {
    if (genOnly) return;
    const t = threadNs();
    const rows = agent.correlator.tick(Date.now());
    stage.tick += threadNs() - t;
    heldPeak = Math.max(heldPeak, agent.correlator.stats().held);
    if (rows.length) {
      emitted += rows.length;
      // Wall time of synchronous calls (the thread's CPU clock ticks too coarsely for one call).
      const w0 = performance.now();
      redactor.applyInPlace(rows as Row[]);
      const w1 = performance.now();
      sink.write(rows as Row[]);
      stage.privacy += (w1 - w0) * 1e6;
      stage.sink_write += (performance.now() - w1) * 1e6;
    }
  };
  const feed = (n: number) => {
    const recs: Uint8Array[] = [];
    let rows = 0;
    const t0 = threadNs();
    while (rows < n) rows += traffic.connection(recs);
    const t = threadNs();
    stage.generate += t - t0;
    if (genOnly) return;
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
  sink.write(redactor.applyInPlace(rest));
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
    genS: Math.round(stage.generate / 1e7) / 100,
    genOnly,
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
// Serialization variants, side by side (JS-thread CPU per row; compressed share of each body).

function formats(rows: Row[]): string[] {
  const lines = rows.map((r) => encodeLineOpen(r, "legacy") + `,"batch_id":"${"0".repeat(32)}"}`);
  const json = te.encode(lines.join("\n") + "\n");
  const enc = new RowBinaryEncoder();
  const id = stringBytes("0".repeat(32));
  const rb = new Uint8Array(rows.reduce((n, r) => n + enc.maxBytes(r, id), 0));
  let p = 0;
  for (const r of rows) p = enc.write(r, "legacy", rb, p, id);
  const out: string[] = [];
  for (const [name, body] of [["JSONEachRow", json], ["RowBinary", rb.subarray(0, p)]] as const) {
    out.push(`${rows.length} rows, ${name} ${Math.round(body.length / rows.length)} B/row`);
    for (const level of [1, 6]) {
      const t = performance.now();
      let z: Uint8Array = body;
      for (let i = 0; i < 3; i++) z = gzipSync(body, { level });
      const ns = (performance.now() - t) * 1e6 / 3 / rows.length;
      out.push(`  gzip -${level}: ${(z.length / body.length).toFixed(3)} of it, ${Math.round(ns)} ns/row`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const arg = (k: string, d: string) =>
    Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
  if (Deno.args[0] === "--child") {
    const [, dir, url, mode, seconds, table] = Deno.args;
    const r = await runMode(dir, url, mode, Number(seconds), table);
    console.log(JSON.stringify(r));
    Deno.exit(0);
  }
  const baseArg = Deno.args.includes("--base") ? Deno.args[Deno.args.indexOf("--base") + 1] : arg("base", "");
  const here = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const variants: Record<string, string> = { this: here, gen: here };
  if (baseArg) variants.base = Deno.realPathSync(baseArg);
  // --net: also the bench alone (the same record generator and loop, an idle sink, no agent) per round, so
  // the agent's cost per row can be given net of the bench's own (its garbage is collected on the agent's time).
  const net = Deno.args.includes("--net");
  const order = [...(baseArg ? ["base", "this", "this", "base"] : ["this"]), ...(net ? ["gen"] : [])];
  const pairs = baseArg ? Number(arg("pairs", "1")) : 1;
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
    let run = 0;
    for (const mode of modes) {
      for (const variant of Array.from({ length: pairs }, () => order).flat()) {
        const p = new Deno.Command(Deno.execPath(), {
          env: variant === "gen" ? { PIPELINE_GEN_ONLY: "1" } : {},
          args: [
            "run",
            "-A",
            `--v8-flags=${v8}`,
            // --prof-dir=DIR: a V8 CPU profile of each mode's child (bench/stages.ts reads them).
            ...(arg("prof-dir", "") ? ["--cpu-prof", `--cpu-prof-dir=${arg("prof-dir", "")}`] : []),
            new URL(import.meta.url).pathname,
            "--child",
            variants[variant],
            ch.url,
            mode,
            String(seconds),
            `bench_${mode}_${run++}`,
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
        const r = { variant, ...JSON.parse(out) } as ModeResult;
        results.push(r);
        if (r.genOnly) {
          console.log(
            `${"bench alone".padEnd(12)} ${r.generated} rows generated in ${r.wallS} s wall, ` +
              `${(r.cpuS + r.genS).toFixed(2)} s CPU → ${perRowUs(r).toFixed(2)} µs per row`,
          );
          continue;
        }
        const label = (baseArg ? `${variant} ` : "") +
          (r.rate === null ? "unpaced" : `paced ${r.rate / 1000}k/s`);
        console.log(
          `${
            label.padEnd(12)
          } offered ${r.offeredRate} rows/s; ${r.landed} rows landed of ${r.generated} in ` +
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
    }
    if (net) {
      console.log(
        "net of the bench (process CPU incl. the generator per generated row, minus the bench alone's):",
      );
      for (const mode of modes) {
        const m = (v: string) =>
          median(results.filter((r) => r.mode === mode && r.variant === v).map(perRowUs));
        const label = (mode === "max" ? "unpaced" : `paced ${Number(mode) / 1000}k/s`).padEnd(12);
        const line = ["this", ...(baseArg ? ["base"] : [])].map((v) =>
          `${v} ${m(v).toFixed(2)} − ${m("gen").toFixed(2)} = ${(m(v) - m("gen")).toFixed(2)} µs/row`
        );
        console.log(`${label} ${line.join("; ")}`);
      }
    }
    if (baseArg) {
      console.log("medians, µs of agent CPU per row (all threads), this/base:");
      for (const mode of modes) {
        const of = (v: string) => results.filter((r) => r.mode === mode && r.variant === v);
        const us = (v: string) => median(of(v).map((r) => 1e6 / r.rowsPerCpuS));
        const sinkNs = (v: string) => median(of(v).map((r) => r.stagesNsPerRow.sink_write));
        const drops = (v: string) => of(v).reduce((a, r) => a + (r.dropped.queue_full ?? 0), 0);
        console.log(
          `${(mode === "max" ? "unpaced" : `paced ${Number(mode) / 1000}k/s`).padEnd(12)} base ` +
            `${us("base").toFixed(2)} → this ${us("this").toFixed(2)} µs/row = ${
              (us("this") / us("base")).toFixed(2)
            }×; ` +
            `sink_write (JS thread) ${sinkNs("base")} → ${sinkNs("this")} ns/row; ` +
            `queue_full drops base ${drops("base")}, this ${drops("this")}`,
        );
      }
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
