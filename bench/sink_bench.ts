/**
 * The ClickHouse sink alone, this checkout against another (`--base DIR`, e.g. an export of main), side by
 * side against a real clickhouse-server: rows → ClickHouseSink.write → encode → gzip → spool → HTTP insert,
 * until the server has acknowledged every row.
 *
 *   deno run -A bench/sink_bench.ts --base DIR [--rows=300000] [--seconds=10] [--pairs=1] [--modes=max,10000]
 *
 * The rows are made once per child by this checkout's own pipeline (synthetic ring records through
 * Agent.onRecord and the correlator, as bench/pipeline_bench.ts), so both sinks get the agent's real rows and
 * string sharing; making them is outside the measurement. Each run is its own child process with the packaged
 * V8 flags; runs alternate base/this in ABBA order per mode. Reported per run: CPU of the whole process (all
 * threads: JS, gzip, HTTP client, GC) from the first write until ClickHouse acknowledged the last row, per
 * row; the time inside write() (wall time of a synchronous call, i.e. the JS thread's); rows landed (counted
 * in the table) and dropped. A slow paced mode (e.g. 100) measures what the process costs per second
 * whatever the rows (timers, one insert a second, the runtime): the summary subtracts it from the other
 * paced modes to give the cost per row on top.
 *  - max: 2,000 rows per write() as fast as the sink takes them (`--rows` in all).
 *  - a number: that many rows per second, written every 100 ms as the agent's correlator tick does
 *    (`--seconds` long).
 */
import process from "node:process";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";
import { median } from "./median.ts";

const HERE = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const V8_FLAGS = Deno.readTextFileSync(`${HERE}/scripts/agent-v8-flags`).trim().split(/\s+/).join(",");

interface RunResult {
  variant: string;
  mode: string;
  rows: number;
  landed: number;
  dropped: Record<string, number>;
  cpuS: number;
  /** Wall seconds of the measurement (writes and drain). */
  wallS: number;
  writeNsPerRow: number;
  usPerRow: number;
  rssPeakMiB: number;
  /** CPU seconds per thread (by name) over the measurement. */
  threads: Record<string, number>;
  drained: boolean;
}

function threadCpu(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const s = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const comm = s.slice(s.indexOf("(") + 1, s.lastIndexOf(")")).replace(/[-_ ]?\d+$/, "");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      out[comm] = (out[comm] ?? 0) + (Number(f[11]) + Number(f[12])) / 100;
    } catch { /* thread ended */ }
  }
  return out;
}

function cpuS(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** The agent's rows for `n` requests (4 per connection, half HTTPS), from this checkout's pipeline. */
async function makeRows(n: number, dir: string): Promise<unknown[]> {
  const { Agent } = await import("../src/agent/agent.ts");
  const { DEFAULT_CONFIG } = await import("../src/config/config.ts");
  const { Traffic } = await import("./traffic.ts");
  const rows: unknown[] = [];
  const agent = new Agent(structuredClone(DEFAULT_CONFIG), { rowHook: () => {} });
  agent.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as never;
  const traffic = new Traffic({ requestsPerConn: 4, tlsShare: 0.5 });
  while (rows.length < n) {
    const recs: Uint8Array[] = [];
    for (let k = 0; k < 1000;) k += traffic.connection(recs);
    for (const r of recs) agent.onRecord(r);
    rows.push(...agent.correlator.flush());
  }
  // The privacy filter with its defaults, as the agent applies it before any sink.
  const { makeRedactor } = await import(`${dir}/src/sink/mod.ts`);
  const { DEFAULT_CONFIG: cfg } = await import(`${dir}/src/config/config.ts`);
  return (await makeRedactor(cfg.privacy)).applyInPlace(rows.slice(0, n));
}

async function child(dir: string, url: string, mode: string, table: string, total: number, seconds: number) {
  const { ClickHouseSink } = await import(`${dir}/src/sink/clickhouse.ts`);
  const { DEFAULT_CONFIG } = await import(`${dir}/src/config/config.ts`);
  const { setLogSink } = await import(`${dir}/src/log.ts`);
  setLogSink(() => {});
  const rate = mode === "max" ? null : Number(mode);
  const n = rate === null ? total : rate * seconds;
  // A pool of the agent's rows, reused in turn (the sink keeps nothing of a row after write()).
  const pool = await makeRows(Math.min(n, 50_000), dir);
  const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-sinkbench-" });
  const sink = await ClickHouseSink.open({
    config: { ...DEFAULT_CONFIG.output.clickhouse, url, table, spool_dir: spool },
  });
  // Warm-up: connect, create the table, JIT; then a clean start.
  for (let i = 0; i < 10; i++) sink.write(pool.slice(i * 1000 % pool.length, i * 1000 % pool.length + 1000));
  if (!(await sink.drain(60_000))) throw new Error("warm-up did not drain: is clickhouse-server up?");
  const base = await count(url, table);
  const st0 = sink.stats();
  // The garbage of making the rows is collected now, not during the measurement.
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  const threads0 = threadCpu();
  let rss = 0;
  // Once a second: a Deno process with two 100 ms timers costs ~5 ms of CPU a second by itself (measured).
  const sampler = setInterval(() => rss = Math.max(rss, Deno.memoryUsage().rss), 1000);
  let at = 0;
  const next = (k: number) => {
    if (at + k > pool.length) at = 0;
    const out = pool.slice(at, at + k);
    at += k;
    return out;
  };
  let writeNs = 0;
  const cpu0 = cpuS();
  const wall0 = performance.now();
  let written = 0;
  if (rate === null) {
    while (written < n) {
      const batch = next(Math.min(2000, n - written));
      const t = performance.now();
      sink.write(batch);
      writeNs += (performance.now() - t) * 1e6;
      written += batch.length;
      await new Promise((r) => setTimeout(r, 0));
    }
  } else {
    const t0 = performance.now();
    for (let tick = 1; written < n; tick++) {
      const due = Math.min(n, Math.round(rate * tick / 10));
      const batch = next(due - written);
      const t = performance.now();
      sink.write(batch);
      writeNs += (performance.now() - t) * 1e6;
      written += batch.length;
      const wait = t0 + tick * 100 - performance.now();
      await new Promise((r) => setTimeout(r, Math.max(0, wait)));
    }
  }
  const drained = await sink.drain(120_000);
  const cpu = cpuS() - cpu0;
  const wallS = (performance.now() - wall0) / 1000;
  const threads1 = threadCpu();
  clearInterval(sampler);
  rss = Math.max(rss, Deno.memoryUsage().rss);
  const st = sink.stats();
  await sink.close();
  await Deno.remove(spool, { recursive: true }).catch(() => {});
  const landed = await count(url, table) - base;
  const dropped: Record<string, number> = {};
  for (const [k, v] of Object.entries(st.dropped as Record<string, number>)) {
    const d = v - ((st0.dropped as Record<string, number>)[k] ?? 0);
    if (d) dropped[k] = d;
  }
  const r: Omit<RunResult, "variant"> = {
    mode,
    rows: written,
    landed,
    dropped,
    cpuS: Math.round(cpu * 1000) / 1000,
    wallS: Math.round(wallS * 100) / 100,
    writeNsPerRow: Math.round(writeNs / written),
    usPerRow: Math.round(cpu / landed * 1e6 * 100) / 100,
    rssPeakMiB: Math.round(rss / 2 ** 20),
    threads: Object.fromEntries(
      Object.entries(threads1).map(([k, v]) => [k, Math.round((v - (threads0[k] ?? 0)) * 100) / 100]),
    ),
    drained,
  };
  console.log(JSON.stringify(r));
}

async function count(url: string, table: string): Promise<number> {
  const r = await fetch(`${url}/?query=${encodeURIComponent(`SELECT count() FROM ja4ebpf.${table}`)}`);
  const t = await r.text();
  return r.ok ? Number(t.trim()) : 0;
}

if (import.meta.main) {
  const arg = (k: string, d: string) =>
    Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ??
      (Deno.args.includes(`--${k}`) ? Deno.args[Deno.args.indexOf(`--${k}`) + 1] : d);
  if (Deno.args[0] === "--child") {
    const [, dir, url, mode, table, total, seconds] = Deno.args;
    await child(dir, url, mode, table, Number(total), Number(seconds));
    Deno.exit(0);
  }
  const baseDir = arg("base", "");
  if (!baseDir) throw new Error("--base DIR: the checkout to compare with (e.g. an export of main)");
  const total = Number(arg("rows", "300000"));
  const seconds = Number(arg("seconds", "10"));
  const pairs = Number(arg("pairs", "1"));
  const modes = arg("modes", "max,10000").split(",");
  const chPorts = arg("ch-ports", "").split(",").filter(Boolean).map(Number);
  const ch = await startClickHouse(
    chPorts.length === 3 ? { httpPort: chPorts[0], tcpPort: chPorts[1], interserverPort: chPorts[2] } : {},
  );
  const variants: Record<string, string> = { base: Deno.realPathSync(baseDir), this: HERE };
  const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  try {
    console.log(
      `load average before: ${load()}; ${navigator.hardwareConcurrency} CPUs; V8 flags ${V8_FLAGS}`,
    );
    const results: RunResult[] = [];
    let k = 0;
    for (const mode of modes) {
      for (let p = 0; p < pairs; p++) {
        for (const variant of ["base", "this", "this", "base"]) {
          const table = `sink_${variant}_${mode}_${k++}`;
          const o = await new Deno.Command(Deno.execPath(), {
            args: [
              "run",
              "-A",
              `--v8-flags=${V8_FLAGS},--expose-gc`,
              new URL(import.meta.url).pathname,
              "--child",
              variants[variant],
              ch.url,
              mode,
              table,
              String(total),
              String(seconds),
            ],
            stdout: "piped",
            stderr: "inherit",
          }).output();
          const line = new TextDecoder().decode(o.stdout).trim().split("\n").at(-1) ?? "";
          if (!o.success || !line.startsWith("{")) {
            console.log(`${variant} ${mode}: the child failed (exit ${o.code})`);
            continue;
          }
          const r = { variant, ...JSON.parse(line) } as RunResult;
          results.push(r);
          console.log(
            `${variant.padEnd(4)} ${
              (mode === "max" ? "unpaced" : `paced ${Number(mode) / 1000}k/s`).padEnd(12)
            } ` +
              `${r.landed}/${r.rows} rows landed, CPU ${r.cpuS} s = ${r.usPerRow} µs/row ` +
              `(write() ${r.writeNsPerRow} ns/row on the JS thread), RSS peak ${r.rssPeakMiB} MiB, ` +
              `dropped ${JSON.stringify(r.dropped)}${r.drained ? "" : " [not drained]"}; ` +
              `thread CPU s ${JSON.stringify(r.threads)}`,
          );
        }
      }
    }
    console.log("\nmedians (µs of process CPU per row; write() ns/row) and this/base:");
    const label = (mode: string) => mode === "max" ? "unpaced" : `paced ${Number(mode) / 1000}k/s`;
    const slow = modes.filter((m) => m !== "max" && Number(m) <= 1000).sort((a, b) => +a - +b)[0];
    const of = (mode: string, v: string) => results.filter((r) => r.mode === mode && r.variant === v);
    // CPU a second whatever the rows, from the slowest paced mode.
    const fixed = (v: string) => slow ? median(of(slow, v).map((r) => r.cpuS / r.wallS)) : 0;
    for (const mode of modes) {
      const m = (v: string, f: (r: RunResult) => number) => median(of(mode, v).map(f));
      const [b, t] = [m("base", (r) => r.usPerRow), m("this", (r) => r.usPerRow)];
      const [bw, tw] = [m("base", (r) => r.writeNsPerRow), m("this", (r) => r.writeNsPerRow)];
      const drops = results.filter((r) => r.mode === mode).reduce(
        (a, r) => a + (r.dropped.queue_full ?? 0),
        0,
      );
      let extra = "";
      if (slow && mode !== "max" && mode !== slow) {
        const on = (v: string) => m(v, (r) => (r.cpuS - fixed(v) * r.wallS) / r.landed * 1e6);
        extra =
          `; on top of the fixed ${(fixed("base") * 1000).toFixed(1)} / ${
            (fixed("this") * 1000).toFixed(1)
          } ` +
          `ms a second: base ${on("base").toFixed(2)} → this ${on("this").toFixed(2)} µs/row = ` +
          `${(on("this") / on("base")).toFixed(2)}×`;
      }
      console.log(
        `${label(mode).padEnd(12)} base ${b.toFixed(2)} → this ${t.toFixed(2)} µs/row = ${
          (t / b).toFixed(2)
        }×; ` +
          `write() ${Math.round(bw)} → ${Math.round(tw)} ns/row = ${(tw / bw).toFixed(2)}×; ` +
          `queue_full drops ${drops}${extra}`,
      );
    }
    console.log(`load average after: ${load()}`);
  } finally {
    await ch.close();
  }
}
