/**
 * Capture overhead: wrk against nginx (keep-alive, full speed) without and with the agent, in interleaved
 * runs (ABBA order, so a slow drift of the shared machine hits both sides alike), over HTTP and over HTTPS.
 * Reports nginx req/s and the with/without ratio, rows vs requests (nginx's access log is the ground
 * truth; every missing row counts as a drop), the agent's own drop counters, agent CPU µs per request and
 * peak RSS, and nginx's CPU per request (the BPF programs run in nginx's syscalls, so their cost lands there).
 *
 *   deno task bench-capture [--duration 30] [--pairs 3] [--https-pairs 3] [--write-doc]
 *   deno task bench-capture --clickhouse …           (this agent shipping to ClickHouse: a third variant)
 *   deno task bench-capture --sink clickhouse [--base DIR] …   (every agent shipping to ClickHouse)
 *     (clickhouse-server started here; those runs' rows are counted in ClickHouse)
 *   deno task bench-capture --tls-probes [--duration 10] [--pairs 1] [--requests 3000] [--write-doc]
 *     (HTTPS: no agent / probes on the server's file / probes on libssl, plus a bystander TLS client:
 *     bench/https_probes.ts)
 *
 * A script, not a test: root, nginx-light, wrk and openssl required. Ports: 22080 (HTTP), 22443 (TLS),
 * 22435 (agent metrics). `--write-doc` replaces the "Capture overhead" section of docs/performance.md.
 */
import { parseArgs } from "node:util";
import { startNginx, type WebServer } from "../tests/helpers/servers.ts";
import { browserScript, h2load, wrk, type WrkResult } from "../tests/helpers/clients.ts";
import { AGENT_V8_FLAGS, checkoutAgent, type RunningAgent, startAgent } from "../tests/helpers/agent.ts";
import { delay, makeTempDir, requirePortsFree, requireRoot, requireTool } from "../tests/helpers/proc.ts";
import { createNetns } from "../tests/helpers/netns.ts";
import { httpsProbesBench } from "./https_probes.ts";
import { batchPolicy, cpuSplitUs, starve } from "./proc_cpu.ts";
import { enableBpfStats, type ProgCost, progCosts, progCounters } from "./bpf_stats.ts";
import { type ClickHouseServer, startClickHouse } from "../tests/helpers/clickhouse.ts";

const HTTP_PORT = 22080;
const TLS_PORT = 22443;
const METRICS_PORT = 22435;
const DOC = new URL("../docs/performance.md", import.meta.url);
const HEADING = "## Capture overhead (nginx + wrk)";

/**
 * http: plain HTTP keep-alive; close: plain HTTP, one connection per request; browser: the same with a
 * browser's header lines, each request with its own session cookie and referer (as new visitors arrive, the
 * case no memo of whole header blocks helps); https: TLS keep-alive (HTTP/1.1, wrk); h2: HTTP/2 over TLS
 * keep-alive (h2load, one stream at a time per connection).
 */
type Mode = "http" | "close" | "browser" | "https" | "h2";
const MODES: readonly Mode[] = ["http", "close", "browser", "https", "h2"];

const isTls = (m: Mode) => m === "https" || m === "h2";
/** The load generator of a mode: h2load speaks HTTP/2, wrk HTTP/1.1. */
const loader = (m: Mode) => m === "h2" ? h2load : wrk;

interface AgentFigures {
  /** utime+stime of the agent process over the load window (wrk + drain), µs. */
  cpuUs: number;
  /** The same split: user space (JS, V8) and kernel (ring reads, syscalls, page faults), µs. */
  userUs: number;
  sysUs: number;
  /** Rows in the file sink for this run's port. */
  rows: number;
  /** Rows carrying a JA4 (TLS) / a JA4H. */
  rowsJa4: number;
  rowsJa4h: number;
  captured: number;
  bpfDrops: number;
  rowsDropped: number;
  peakRssKb: number;
  readyMs: number;
  /** The agent's `ready` line (capture methods, ports). */
  readyLine: string;
  /** Non-zero counters worth a look when rows go missing (events by hook, drops by reason, parse errors). */
  counters: Record<string, number>;
  /** WARN/ERROR lines the agent logged. */
  warnings: string[];
  /** With --bpf-stats: each BPF program's runs and time per request over the wrk run. */
  bpf?: ProgCost[];
  /** --agent-warmup: requests nginx logged and the agent's CPU (µs) over the warm-up load, before the
   * measured run (V8 compiles the hot path in its first seconds under load: a one-time cost). */
  warmupRequests?: number;
  warmupCpuUs?: number;
}

interface RunFigures {
  mode: Mode;
  withAgent: boolean;
  /** With --base: the run was of the earlier checkout's agent. */
  base?: boolean;
  /** The --clickhouse third variant: this agent shipping its rows to ClickHouse instead of the file sink. */
  ch?: boolean;
  wrk: WrkResult;
  /** Requests nginx logged during the run (with --agent-warmup, the warm-up's too: rows are counted over both). */
  logged: number;
  /** Requests nginx logged during the measured wrk run alone (CPU per request divides by these). */
  measured?: number;
  /** utime+stime of nginx master + workers during the wrk run, µs. */
  nginxCpuUs: number;
  /** Most other agents seen on the host around the wrk run (their probes slow this nginx and wrk too). */
  otherAgents?: number;
  agent?: AgentFigures;
}

/** utime + stime of a process (all its threads), µs; 0 once it is gone. */
function cpuUs(pid: number): number {
  const c = cpuSplitUs(pid);
  return c.user + c.sys;
}

function vmHwmKb(pid: number): number {
  try {
    return Number(/VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function nginxCpuUs(ng: WebServer): number {
  const p = ng.pids();
  return [p.master, ...p.workers].reduce((s, pid) => s + cpuUs(pid), 0);
}

/** Newlines in a file from byte offset `from` on. */
async function countLinesFrom(path: string, from: number): Promise<number> {
  using f = await Deno.open(path);
  await f.seek(from, Deno.SeekMode.Start);
  let n = 0;
  for await (const chunk of f.readable) for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) n++;
  return n;
}

/** Streams the file sink's JSON lines, counting rows for `port` and those with a JA4 / JA4H. */
async function countRows(path: string, port: number): Promise<{ rows: number; ja4: number; ja4h: number }> {
  const out = { rows: 0, ja4: 0, ja4h: 0 };
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch {
    return out;
  }
  const want = `"dst_port":${port},`;
  const dec = new TextDecoder();
  let rest = "";
  const line = (l: string) => {
    if (!l.includes(want)) return;
    out.rows++;
    // Absent values are not written (older agents wrote "").
    if (l.includes(`"ja4":"`) && !l.includes(`"ja4":""`)) out.ja4++;
    if (l.includes(`"ja4h":"`) && !l.includes(`"ja4h":""`)) out.ja4h++;
  };
  for await (const chunk of f.readable) {
    const parts = (rest + dec.decode(chunk, { stream: true })).split("\n");
    rest = parts.pop()!;
    for (const l of parts) line(l);
  }
  if (rest) line(rest);
  return out;
}

/** The same counts from the ClickHouse table a run's agent inserted into (once every row was acknowledged). */
async function countRowsCh(
  ch: ClickHouseServer,
  table: string,
  port: number,
): Promise<{ rows: number; ja4: number; ja4h: number }> {
  const t = await ch.query(
    `SELECT count(), countIf(ja4 != ''), countIf(ja4h != '') FROM ${table} WHERE dst_port = ${port}`,
  ).catch(() => "0\t0\t0"); // no table: the agent never shipped a row
  const [rows, ja4, ja4h] = t.trim().split("\t").map(Number);
  return { rows, ja4, ja4h };
}

/** Tables of the --clickhouse runs, one per run (counted by run, not by time). */
const CH_DATABASE = "ja4bench";
let chRuns = 0;

function sumSeries(m: Map<string, number>, name: string): number {
  let s = 0;
  for (const [k, v] of m) if (k === name || k.startsWith(name + "{")) s += v;
  return s;
}

/** Waits until the agent holds no unresolved rows and its emitted count stopped moving (hold_ms + flush). */
async function drain(agent: RunningAgent, timeoutMs = 60_000): Promise<Map<string, number>> {
  const deadline = Date.now() + timeoutMs;
  let last = -1, still = 0;
  let m = await agent.metrics();
  while (Date.now() < deadline) {
    const emitted = sumSeries(m, "ja4ebpf_rows_emitted_total");
    if (sumSeries(m, "ja4ebpf_rows_spooled") === 0 && emitted === last) {
      if (++still >= 3) break;
    } else still = 0;
    last = emitted;
    await delay(500);
    m = await agent.metrics();
  }
  return m;
}

/**
 * `perSecond` TCP health checks against `port` (a load balancer's, or a port scanner's): connect, close, not a
 * byte sent. The server never reads a byte from them, so the agent sees each one's SYN and nothing else.
 */
function healthChecks(port: number, perSecond: number): { stop(): Promise<number> } {
  let done = 0;
  const pending = new Set<Promise<void>>();
  const one = async () => {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      done++;
    } catch { /* a refused or reset connect is a health check too */ }
  };
  const tickMs = 10;
  let owed = 0;
  const timer = setInterval(() => {
    owed += perSecond * tickMs / 1000;
    for (; owed >= 1 && pending.size < 256; owed--) {
      const p = one().finally(() => pending.delete(p));
      pending.add(p);
    }
  }, tickMs);
  return {
    async stop() {
      clearInterval(timer);
      await Promise.all(pending);
      return done;
    },
  };
}

/** Where wrk runs: on the host (loopback), or in a network namespace behind a veth pair (--veth). */
interface Client {
  host: string;
  netns?: string;
}

function clientUrl(c: Client, mode: Mode): string {
  return isTls(mode) ? `https://${c.host}:${TLS_PORT}/` : `http://${c.host}:${HTTP_PORT}/`;
}

async function oneRun(
  ng: WebServer,
  mode: Mode,
  withAgent: boolean,
  o: {
    duration: number;
    threads: number;
    connections: number;
    keep: boolean;
    starve: boolean;
    batch: boolean;
    v8Flags: string;
    bpfStats: boolean;
    agentWarmup: number;
    scan: number;
  },
  /** The earlier checkout whose agent runs instead (--base). */
  baseDir: string | undefined,
  client: Client,
  /** --clickhouse: the agent ships to this server (its production sink: RowBinary, gzip, disk spool). */
  ch?: ClickHouseServer,
): Promise<RunFigures> {
  const port = isTls(mode) ? TLS_PORT : HTTP_PORT;
  const url = clientUrl(client, mode);
  let agent: RunningAgent | undefined;
  const dir = withAgent ? await makeTempDir("ja4ebpf-capbench-") : "";
  try {
    let readyMs = 0;
    const chTable = ch ? `run${++chRuns}` : "";
    if (withAgent) {
      const t0 = performance.now();
      agent = await startAgent({
        dir,
        metricsPort: METRICS_PORT,
        // The production defaults over the test harness's quick settings; only this nginx's ports are
        // watched (other servers on this shared machine stay out of the figures).
        config: {
          uprobes: { max_retries: 30, retry_interval_sec: 2 },
          capture: { hold_ms: 2000, ports: [HTTP_PORT, TLS_PORT] },
          output: ch
            ? {
              file: { path: "" },
              clickhouse: { url: ch.url, database: CH_DATABASE, table: chTable, spool_dir: `${dir}/spool` },
            }
            : { file: { max_size_mb: 1048576, max_files: 1 }, clickhouse: { spool_dir: "" } },
          metrics: { enabled: true },
        },
        readyTimeoutMs: 90_000,
        // The earlier version with its own packaged V8 flags.
        ...(baseDir ? checkoutAgent(baseDir) : { v8Flags: o.v8Flags }),
      });
      readyMs = performance.now() - t0;
      if (o.starve) starve(agent.pid);
      if (o.batch) batchPolicy(agent.pid);
    }
    const logFrom = (await Deno.stat(ng.accessLogPath).catch(() => ({ size: 0 }))).size;
    const load = async (duration: number) => {
      const scanner = o.scan > 0 ? healthChecks(port, o.scan) : undefined;
      try {
        return await loader(mode)({
          url,
          netns: client.netns,
          threads: o.threads,
          connections: o.connections,
          duration,
          headers: mode === "close" ? ["Connection: close"] : [],
          script: mode === "browser" ? await browserScript() : undefined,
        });
      } finally {
        await scanner?.stop();
      }
    };
    let warmup: { requests: number; cpuUs: number; captured: number } | undefined;
    if (agent && o.agentWarmup > 0) {
      // Steady state is what a long-running agent costs: the same load first, drained, not counted.
      const c0 = cpuUs(agent.pid);
      await load(o.agentWarmup);
      const m = await drain(agent);
      warmup = {
        cpuUs: cpuUs(agent.pid) - c0,
        requests: await countLinesFrom(ng.accessLogPath, logFrom),
        captured: sumSeries(m, "ja4ebpf_rows_captured_total"),
      };
    }
    const measureFrom = (await Deno.stat(ng.accessLogPath).catch(() => ({ size: 0 }))).size;
    const agentCpu0 = agent ? cpuSplitUs(agent.pid) : { user: 0, sys: 0 };
    const ngCpu0 = nginxCpuUs(ng);
    const mine = withAgent ? 1 : 0;
    let others = otherAgents() - mine;
    const sampler = setInterval(() => others = Math.max(others, otherAgents() - mine), 2000);
    const restoreStats = agent && o.bpfStats ? enableBpfStats() : undefined;
    const progs0 = restoreStats ? progCounters(agent!.pid) : undefined;
    const w = await load(o.duration);
    const ngCpu = nginxCpuUs(ng) - ngCpu0;
    const progs1 = restoreStats ? progCounters(agent!.pid) : undefined;
    restoreStats?.();
    clearInterval(sampler);
    await delay(300); // nginx logs after the response
    const logged = await countLinesFrom(ng.accessLogPath, logFrom);
    const measured = await countLinesFrom(ng.accessLogPath, measureFrom);
    const fig: RunFigures = {
      mode,
      withAgent,
      wrk: w,
      logged,
      measured,
      nginxCpuUs: ngCpu,
      otherAgents: others,
    };
    if (baseDir) fig.base = true;
    if (agent) {
      const m = await drain(agent);
      const split = cpuSplitUs(agent.pid);
      const userUs = split.user - agentCpu0.user, sysUs = split.sys - agentCpu0.sys;
      const cpu = userUs + sysUs;
      const peak = vmHwmKb(agent.pid);
      const exit = await agent.stop("SIGTERM", 30_000);
      if (exit.code !== 0) console.error(`agent exited ${exit.code}: ${agent.stderr().slice(-2000)}`);
      const c = ch
        ? await countRowsCh(ch, `${CH_DATABASE}.${chTable}`, port)
        : await countRows(agent.rowsPath, port);
      fig.agent = {
        cpuUs: cpu,
        userUs,
        sysUs,
        rows: c.rows,
        rowsJa4: c.ja4,
        rowsJa4h: c.ja4h,
        captured: sumSeries(m, "ja4ebpf_rows_captured_total") - (warmup?.captured ?? 0),
        bpfDrops: sumSeries(m, "ja4ebpf_bpf_drops_total"),
        rowsDropped: sumSeries(m, "ja4ebpf_rows_dropped_total"),
        peakRssKb: peak,
        readyMs,
        readyLine: agent.readyLine,
        counters: Object.fromEntries(
          [...m].filter(([k, v]) =>
            v !== 0 &&
            /^ja4ebpf_(events|bpf_drops|rows_dropped|parse_errors|rows_captured|rows_emitted)/.test(k)
          ),
        ),
        warnings: agent.stderr().split("\n").filter((l) => / (WARN|ERROR) /.test(l)).slice(0, 20),
        bpf: progs0 && progs1 ? progCosts(progs0, progs1, measured) : undefined,
        warmupRequests: warmup?.requests,
        warmupCpuUs: warmup?.cpuUs,
      };
    }
    return fig;
  } finally {
    await agent?.close();
    if (dir && !o.keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
    else if (dir) console.error(`  kept ${dir}`);
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1);
const fmt = (x: number, d = 0) =>
  Number.isFinite(x)
    ? x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d })
    : "—";
const pct = (x: number, d = 2) => Number.isFinite(x) ? `${(x * 100).toFixed(d)} %` : "—";

interface ModeSummary {
  mode: Mode;
  runs: RunFigures[];
  rpsOff: number;
  rpsOn: number;
  ratio: number;
  /** Ratio of each adjacent (off, on) pair. */
  pairRatios: number[];
  requestsOn: number;
  rows: number;
  misses: number;
  completeness: number;
  ja4Share: number;
  bpfDrops: number;
  rowsDropped: number;
  agentUsPerReq: number;
  /** The same split into user and system time. */
  agentUserUsPerReq: number;
  agentSysUsPerReq: number;
  /** --agent-warmup: the agent's CPU per request over its first seconds of load (JIT compilation included). */
  warmupUsPerReq?: number;
  /** Agent CPU per row it actually captured (what a faster consumer would pay per request). */
  agentUsPerRow: number;
  peakRssMb: number;
  nginxUsPerReqOff: number;
  nginxUsPerReqOn: number;
}

function summarize(mode: Mode, runs: RunFigures[]): ModeSummary {
  const off = runs.filter((r) => !r.withAgent), on = runs.filter((r) => r.withAgent);
  const pairRatios: number[] = [];
  for (let i = 0; i + 1 < runs.length; i += 2) {
    const [a, b] = runs[i].withAgent ? [runs[i + 1], runs[i]] : [runs[i], runs[i + 1]];
    pairRatios.push(b.wrk.requestsPerSec / a.wrk.requestsPerSec);
  }
  const requestsOn = on.reduce((s, r) => s + r.logged, 0);
  // CPU per request over the measured runs (the warm-up's requests and CPU apart).
  const measuredOn = on.reduce((s, r) => s + (r.measured ?? r.logged), 0);
  const warm = on.filter((r) => r.agent!.warmupRequests);
  const rows = on.reduce((s, r) => s + r.agent!.rows, 0);
  const rpsOff = mean(off.map((r) => r.wrk.requestsPerSec)),
    rpsOn = mean(on.map((r) => r.wrk.requestsPerSec));
  const perReq = (rs: RunFigures[]) =>
    rs.reduce((s, r) => s + r.nginxCpuUs, 0) / rs.reduce((s, r) => s + r.wrk.requests, 0);
  return {
    mode,
    runs,
    rpsOff,
    rpsOn,
    ratio: rpsOn / rpsOff,
    pairRatios,
    requestsOn,
    rows,
    misses: Math.max(0, requestsOn - rows),
    completeness: rows / requestsOn,
    ja4Share: on.reduce((s, r) => s + r.agent!.rowsJa4, 0) / Math.max(rows, 1),
    bpfDrops: on.reduce((s, r) => s + r.agent!.bpfDrops, 0),
    rowsDropped: on.reduce((s, r) => s + r.agent!.rowsDropped, 0),
    agentUsPerReq: on.reduce((s, r) => s + r.agent!.cpuUs, 0) / measuredOn,
    agentUserUsPerReq: on.reduce((s, r) => s + (r.agent!.userUs ?? 0), 0) / measuredOn,
    agentSysUsPerReq: on.reduce((s, r) => s + (r.agent!.sysUs ?? 0), 0) / measuredOn,
    warmupUsPerReq: warm.length
      ? warm.reduce((s, r) => s + r.agent!.warmupCpuUs!, 0) /
        warm.reduce((s, r) => s + r.agent!.warmupRequests!, 0)
      : undefined,
    agentUsPerRow: on.reduce((s, r) => s + r.agent!.cpuUs, 0) / on.reduce((s, r) => s + r.agent!.captured, 0),
    peakRssMb: Math.max(...on.map((r) => r.agent!.peakRssKb)) / 1024,
    nginxUsPerReqOff: perReq(off),
    nginxUsPerReqOn: perReq(on),
  };
}

function runTable(s: ModeSummary): string {
  const lines = [
    "| run | agent | wrk requests | nginx req/s | logged | rows | JA4 rows | bpf drops | rows dropped | agent CPU µs/req | agent peak RSS MiB | nginx CPU µs/req | other agents |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  s.runs.forEach((r, i) => {
    const a = r.agent;
    lines.push(
      `| ${s.mode} ${i + 1} | ${r.withAgent ? "on" : "off"} | ${fmt(r.wrk.requests)} | ${
        fmt(r.wrk.requestsPerSec)
      } | ${fmt(r.logged)} | ${a ? fmt(a.rows) : ""} | ${a && isTls(s.mode) ? fmt(a.rowsJa4) : ""} | ${
        a ? fmt(a.bpfDrops) : ""
      } | ${a ? fmt(a.rowsDropped) : ""} | ${a ? fmt(a.cpuUs / (r.measured ?? r.logged), 2) : ""} | ${
        a ? fmt(a.peakRssKb / 1024, 0) : ""
      } | ${fmt(r.nginxCpuUs / r.wrk.requests, 1)} | ${r.otherAgents ?? "?"} |`,
    );
  });
  return lines.join("\n");
}

function summaryTable(ss: ModeSummary[]): string {
  const lines = [
    "| | nginx req/s without | with | ratio (goal ≥ 0.95) | pair ratios | rows / requests (goal 100 %) | misses | agent CPU µs/req (user + sys) | µs/captured row | cold µs/req (warm-up) | agent peak RSS MiB | nginx CPU µs/req without → with |",
    "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
  ];
  for (const s of ss) {
    lines.push(
      `| ${s.mode.toUpperCase()} | ${fmt(s.rpsOff)} | ${fmt(s.rpsOn)} | ${s.ratio.toFixed(3)} | ${
        s.pairRatios.map((x) => x.toFixed(3)).join(", ")
      } | ${fmt(s.rows)} / ${fmt(s.requestsOn)} = ${pct(s.completeness, 3)} | ${fmt(s.misses)} | ${
        fmt(s.agentUsPerReq, 2)
      } (${fmt(s.agentUserUsPerReq, 2)} + ${fmt(s.agentSysUsPerReq, 2)}) | ${fmt(s.agentUsPerRow, 2)} | ${
        s.warmupUsPerReq === undefined ? "—" : fmt(s.warmupUsPerReq, 2)
      } | ${fmt(s.peakRssMb)} | ${fmt(s.nginxUsPerReqOff, 1)} → ${fmt(s.nginxUsPerReqOn, 1)} |`,
    );
  }
  return lines.join("\n");
}

/** Agent processes (`main.ts run` / `ja4ebpf run`) on the host. */
function otherAgents(): number {
  let n = 0;
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const c = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).split("\0");
      // `deno run … src/main.ts run …`: the first "run" is deno's own subcommand, so look at each one
      if (c.some((a, i) => a === "run" && i > 0 && /main\.ts$|ja4ebpf$/.test(c[i - 1]))) n++;
    } catch { /* gone */ }
  }
  return n;
}

async function machineFacts(): Promise<string> {
  const cpu = /model name\s*:\s*(.*)/.exec(await Deno.readTextFile("/proc/cpuinfo"))?.[1] ?? "?";
  const out = (cmd: string, args: string[]) => {
    try {
      const o = new Deno.Command(cmd, { args }).outputSync();
      return (new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr)).trim();
    } catch {
      return "?";
    }
  };
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  // Other agents on the host matter: their uprobes on the shared libssl fire in this nginx and in wrk too.
  const others = otherAgents();
  return `${navigator.hardwareConcurrency} vCPU (${cpu}), kernel ${Deno.osRelease()}, ${
    out("nginx", ["-v"]).replace(/^nginx version: /, "")
  }, ${
    out("wrk", ["-v"]).split("\n")[0].split(" [")[0]
  }, Deno ${Deno.version.deno}; load average at start ${load}, other ja4ebpf agents running at start: ${others}`;
}

function existsFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

/** --base: this agent and the earlier one, measured in the same pairs. */
/** What the third variant of each pair was: an earlier checkout (--base) or the ClickHouse sink (--clickhouse). */
interface Third {
  /** Row labels of sideBySide's two agents: [its `before`, its `now`]. */
  names: [string, string];
  intro: string;
}

const BASE_THIRD: Third = {
  names: ["before", "after"],
  intro:
    `Side by side with an earlier version (\`--base\`: the agent of another checkout — its code, BPF object and
V8 flags — run as a third variant in each pair, order reversed every other pair; "without" is the same pairs'
runs without an agent):`,
};

const CH_THIRD: Third = {
  names: ["file", "clickhouse"],
  intro:
    `Side by side, the file sink against the ClickHouse sink (\`--clickhouse\`: the same agent shipping its rows
to clickhouse-server on loopback as in production — RowBinary, gzip, a disk spool, one table per run — as a
third variant in each pair, order reversed every other pair; rows counted in ClickHouse once every row was
acknowledged):`,
};

function sideBySide(now: ModeSummary[], before: ModeSummary[], third: Third = BASE_THIRD): string {
  const bpfNs = (s: ModeSummary) => {
    const on = s.runs.filter((r) => r.agent?.bpf);
    if (on.length === 0) return NaN;
    return mean(on.map((r) => r.agent!.bpf!.reduce((a, c) => a + c.nsPerRequest, 0)));
  };
  const lines = [
    "| mode | agent | nginx req/s with | ratio to without | agent CPU µs/req (user + sys) | cold µs/req | BPF ns/req | nginx CPU µs/req | peak RSS MiB | rows / requests |",
    "| ---- | ----- | ---------------: | ---------------: | ----------------------------- | ----------: | ---------: | ---------------: | -----------: | --------------- |",
  ];
  for (const s of now) {
    const b = before.find((x) => x.mode === s.mode);
    if (!b) continue;
    for (const [name, x] of [[third.names[0], b], [third.names[1], s]] as const) {
      lines.push(
        `| ${s.mode} | ${name} | ${fmt(x.rpsOn)} | ${x.ratio.toFixed(3)} | ${fmt(x.agentUsPerReq, 2)} (${
          fmt(x.agentUserUsPerReq, 2)
        } + ${fmt(x.agentSysUsPerReq, 2)}) | ${
          x.warmupUsPerReq === undefined ? "—" : fmt(x.warmupUsPerReq, 2)
        } | ${fmt(bpfNs(x))} | ${fmt(x.nginxUsPerReqOn, 1)} | ${fmt(x.peakRssMb)} | ${
          pct(x.completeness, 3)
        } |`,
      );
    }
    lines.push(
      `| ${s.mode} | **${third.names[1]} / ${third.names[0]}** | ${(s.rpsOn / b.rpsOn).toFixed(2)}× | | **${
        (s.agentUsPerReq / b.agentUsPerReq).toFixed(2)
      }×** | ${
        s.warmupUsPerReq && b.warmupUsPerReq ? (s.warmupUsPerReq / b.warmupUsPerReq).toFixed(2) + "×" : ""
      } | ${Number.isNaN(bpfNs(s) / bpfNs(b)) ? "—" : (bpfNs(s) / bpfNs(b)).toFixed(2) + "×"} | ${
        (s.nginxUsPerReqOn / b.nginxUsPerReqOn).toFixed(2)
      }× | ${(s.peakRssMb / b.peakRssMb).toFixed(2)}× | |`,
    );
  }
  return `${third.intro}

${lines.join("\n")}
`;
}

/** Kernel side (--bpf-stats): each program's runs and time per request, from the first run with the agent. */
function bpfTable(ss: ModeSummary[]): string {
  const rows: string[] = [];
  for (const s of ss) {
    const costs = s.runs.find((r) => r.agent?.bpf)?.agent?.bpf;
    if (!costs) continue;
    const total = costs.reduce((a, c) => a + c.nsPerRequest, 0);
    for (const c of costs) {
      rows.push(
        `| ${s.mode} | \`${c.name}\` | ${c.runsPerRequest.toFixed(2)} | ${fmt(c.nsPerRun)} | ${
          fmt(c.nsPerRequest)
        } |`,
      );
    }
    rows.push(`| ${s.mode} | **all programs** | | | **${fmt(total)}** |`);
  }
  if (rows.length === 0) return "";
  return `BPF programs during the runs with the agent (\`kernel.bpf_stats_enabled=1\`; the program bodies only —
the tracepoint and uprobe machinery around them comes on top, in the traced processes' system time):

| mode | program | runs/request | ns/run | ns/request |
| ---- | ------- | -----------: | -----: | ---------: |
${rows.join("\n")}
`;
}

/** Plain-language verdicts against the goals, with the agent's own explanation for missing rows. */
function findings(ss: ModeSummary[]): string {
  const out: string[] = [];
  for (const s of ss) {
    const M = s.mode.toUpperCase();
    const on = s.runs.filter((r) => r.agent);
    const capture = /capture=(.*?) buffer=(\S+)/.exec(on[0]?.agent?.readyLine ?? "");
    out.push(
      `- ${M}: throughput ratio ${s.ratio.toFixed(3)} (${
        s.ratio >= 0.95 ? "meets" : "misses"
      } the 0.95 goal); ` +
        `${pct(s.completeness, 2)} of requests became rows (${
          s.misses === 0 ? "meets" : "misses"
        } the 100 % goal, ` +
        `${fmt(s.misses)} missing); agent ${fmt(s.agentUsPerReq, 1)} µs CPU per request, peak RSS ${
          fmt(s.peakRssMb)
        } MiB. Capture as reported by the agent: \`${capture?.[1] ?? "?"}\`, buffer \`${
          capture?.[2] ?? "?"
        }\`.`,
    );
    if (s.misses > 0) {
      const drops: Record<string, number> = {};
      for (const r of on) {
        for (const [k, v] of Object.entries(r.agent!.counters)) {
          if (/_(bpf_drops|rows_dropped)_total|parse_errors/.test(k)) drops[k] = (drops[k] ?? 0) + v;
        }
      }
      const listed = Object.entries(drops).map(([k, v]) => `\`${k}\` ${fmt(v)}`).join(", ");
      out.push(
        `  Where the rows went, from the agent's counters summed over the runs: ${
          listed || "no drop counted"
        }.` +
          (s.rows === 0 ? ` No row at all on this port: this build does not capture this traffic.` : ""),
      );
    }
  }
  return out.join("\n");
}

function section(
  date: string,
  facts: string,
  o: {
    duration: number;
    pairs: number;
    httpsPairs: number;
    threads: number;
    connections: number;
    workers?: number;
    modes?: Mode[];
    starve?: boolean;
    veth?: boolean;
    scan?: number;
    batch?: boolean;
    bpfStats?: boolean;
    base?: string;
    agentWarmup?: number;
  },
  ss: ModeSummary[],
): string {
  const flags =
    `--duration ${o.duration} --pairs ${o.pairs} --https-pairs ${o.httpsPairs} --threads ${o.threads}` +
    ` --connections ${o.connections} --workers ${o.workers ?? 2} --modes ${
      (o.modes ?? ["http", "https"]).join(",")
    }` +
    (o.starve ? " --starve" : "") + (o.batch ? " --batch" : "") + (o.bpfStats ? " --bpf-stats" : "") +
    (o.veth ? " --veth" : "") + (o.scan ? ` --scan ${o.scan}` : "") +
    (o.base ? ` --base ${o.base}` : "") + ` --agent-warmup ${o.agentWarmup ?? 0}`;
  return `${HEADING}

Measured ${date} with \`deno task bench-capture ${flags}\`
(bench/capture_overhead.ts). Machine: ${facts}.

Set-up: Debian nginx-light, ${
    o.workers ?? 2
  } worker(s), \`return 200 "ok\\n"\`, keep-alive (keepalive_requests 1000,
nginx's default), access log on; plain HTTP on :${HTTP_PORT} and TLS 1.3 on :${TLS_PORT} (self-signed P-256
certificate). Modes: **HTTP** keep-alive, **CLOSE** plain HTTP with \`Connection: close\` (one TCP connection per
request: SYN, request read and close for every request), **HTTPS** keep-alive.${
    o.starve
      ? " **Starved**: every agent thread at nice 19 (the overload policy: the agent below the server)."
      : ""
  }${
    o.batch ? " **Batch**: every agent thread under SCHED_BATCH (the unit's CPUSchedulingPolicy=batch)." : ""
  }
Load: \`wrk -t${o.threads} -c${o.connections} -d${o.duration}s\` at full speed${
    o.veth
      ? ", from a network namespace over a veth pair (the client's packets reach tc as from a NIC; on lo tc also " +
        "runs for the server's replies)"
      : ""
  }${
    o.scan ? `, beside ${o.scan} TCP health checks per second (connect, close, no byte)` : ""
  }. wrk runs on the same 2 vCPUs as
nginx and the agent, so the agent's CPU comes straight out of nginx's and wrk's share: on a 2-core box this is a
worst case, not what a server with spare cores sees. Runs alternate without/with the agent in ABBA order; the
agent is started fresh for each "with" run (\`run --config\`, file sink, metrics on, production defaults,
\`capture.ports\` set to these two ports because the machine runs other nginx instances) and stopped after it.${
    o.agentWarmup
      ? ` Each fresh agent first takes ${o.agentWarmup} s of the same load, drained and not counted: V8 compiles
the hot path concurrently during an agent's first seconds under load, a one-time cost (shown apart as **cold
µs/req**) that a long-running agent no longer pays. Rows / requests counts the warm-up's requests too.`
      : ""
  }

The machine is shared with other engineers' test runs (see the load average): their CPU use and their
agents' probes (syscall tracepoints filter in the kernel, but uprobes on the shared libssl fire in every process
that maps it, this nginx and wrk included) slow both sides of a pair; "other agents" in the run table counts them.
Pair ratios vary by more than the goal's 5 % margin under such load, so treat single pairs with care.

- **ratio**: mean nginx req/s with the agent / without. Pair ratios compare each adjacent pair.
- **rows / requests**: rows in the agent's file for the port / requests in nginx's access log during the "with"
  runs (nginx's log is the ground truth; wrk's own count is in the run table). Every missing row is a drop.
- **bpf drops / rows dropped**: \`ja4ebpf_bpf_drops_total\` and \`ja4ebpf_rows_dropped_total\` from /metrics.
- **agent CPU µs/req**: utime+stime of the agent process (all threads) from /proc over the measured load window
  and the drain that follows, divided by its requests; **µs/captured row** divides the same CPU by the rows the agent
  received (\`ja4ebpf_rows_captured_total\`), the cost per request once nothing is dropped. **Peak RSS**: VmHWM.
- **nginx CPU µs/req**: utime+stime of nginx's master and workers; the BPF programs run inside nginx's
  system calls, so the kernel-side cost shows as the difference between without and with.

${summaryTable(ss)}

${findings(ss)}

${bpfTable(ss)}
Runs:

${ss.map(runTable).join("\n\n")}
`;
}

async function writeDoc(text: string): Promise<void> {
  let doc = await Deno.readTextFile(DOC).catch(() => "# Performance\n");
  const start = doc.indexOf(HEADING + "\n");
  if (start < 0) {
    doc = doc.trimEnd() + "\n\n" + text;
  } else {
    const next = doc.indexOf("\n## ", start + HEADING.length);
    doc = doc.slice(0, start) + text + (next < 0 ? "" : "\n" + doc.slice(next + 1));
  }
  await Deno.writeTextFile(DOC, doc.trimEnd() + "\n");
  // Keep the doc `deno fmt` clean (the tables get aligned).
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", DOC.pathname] }).output();
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      duration: { type: "string", default: "30" },
      pairs: { type: "string", default: "3" },
      "https-pairs": { type: "string" },
      threads: { type: "string", default: "1" },
      connections: { type: "string", default: "32" },
      workers: { type: "string", default: "1" },
      modes: { type: "string", default: "http,close,https" },
      starve: { type: "boolean", default: false },
      "bpf-stats": { type: "boolean", default: false },
      base: { type: "string" },
      batch: { type: "boolean", default: false },
      "v8-flags": { type: "string", default: AGENT_V8_FLAGS },
      "write-doc": { type: "boolean", default: false },
      "no-agent": { type: "boolean", default: false },
      json: { type: "string" },
      verbose: { type: "boolean", short: "v", default: false },
      "keep-rows": { type: "boolean", default: false },
      "from-json": { type: "string" },
      "tls-probes": { type: "boolean", default: false },
      requests: { type: "string", default: "3000" },
      "agent-warmup": { type: "string", default: "8" },
      scan: { type: "string", default: "0" },
      veth: { type: "boolean", default: false },
      clickhouse: { type: "boolean", default: false },
      sink: { type: "string", default: "file" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "Usage: deno task bench-capture [--duration S] [--pairs N] [--https-pairs N] [--threads T]\n" +
        "  [--connections C] [--workers W] [--modes http,close,https] [--starve]\n" +
        "  [--write-doc] [--json FILE] [--no-agent (baseline runs only, checks the set-up)]\n" +
        "  --starve: every agent thread at nice 19 (below the server) — the overload policy run\n" +
        "  --batch: every agent thread under SCHED_BATCH (the unit's CPUSchedulingPolicy=batch)\n" +
        "  --base DIR: also an earlier checkout's agent (its src/main.ts, its BPF object, its V8 flags) in\n" +
        "    each pair (ABCCBA), and a side-by-side table of the two\n" +
        "  --bpf-stats: kernel.bpf_stats_enabled during the runs with the agent; each BPF program's runs\n" +
        "    and ns per request\n" +
        "  --agent-warmup S: S seconds of the same load on each fresh agent before its measured run, not\n" +
        "    counted (V8 compiles the hot path in the first seconds; reported apart as a one-time cost); 0: cold\n" +
        "  --scan N: N TCP health checks per second (connect, close, no byte) beside the load, in every run\n" +
        "  --veth: wrk in a network namespace behind a veth pair (packets arrive as from a NIC), not on lo\n" +
        "  --sink file|clickhouse: where every agent's rows go (clickhouse: a server started here; with --base,\n" +
        "    both versions ship to it)\n" +
        "  --clickhouse: also this agent shipping to ClickHouse (clickhouse-server started here) as a third\n" +
        "    variant in each pair, and a side-by-side table of the file and ClickHouse sinks",
    );
    return 0;
  }
  const int = (k: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${k} must be an integer ≥ ${min}`);
    return n;
  };
  const o = {
    duration: int("duration", values.duration, 1),
    pairs: int("pairs", values.pairs, 1),
    httpsPairs: int("https-pairs", values["https-pairs"] ?? values.pairs, 0),
    threads: int("threads", values.threads, 1),
    connections: int("connections", values.connections, 1),
    keep: values["keep-rows"] === true,
    workers: int("workers", values.workers, 1),
    modes: values.modes!.split(",").map((m) => {
      if (!MODES.includes(m as Mode)) throw new Error(`--modes: ${m} is not one of ${MODES.join(", ")}`);
      return m as Mode;
    }),
    starve: values.starve === true,
    bpfStats: values["bpf-stats"] === true,
    agentWarmup: int("agent-warmup", values["agent-warmup"], 0),
    scan: int("scan", values.scan, 0),
    veth: values.veth === true,
    batch: values.batch === true,
    base: values.base ?? "",
    // As packaged (scripts/agent-v8-flags); JA4EBPF_AGENT_MAIN=<other checkout>/src/main.ts with that
    // checkout's flags measures an earlier version the same way.
    v8Flags: values["v8-flags"]!,
  };
  if (values["from-json"]) {
    // Re-render a saved run (e.g. after a change to the report's layout) without measuring again.
    const j = JSON.parse(await Deno.readTextFile(values["from-json"]));
    const ss = (j.summaries as ModeSummary[]).map((s) => summarize(s.mode, s.runs));
    let text = section(j.date, j.facts, j.o, ss);
    if (j.baseSummaries?.length && j.o.base) {
      const bs = (j.baseSummaries as ModeSummary[]).map((s) => summarize(s.mode, s.runs));
      text += "\n" + sideBySide(ss, bs);
    }
    console.log(text);
    if (values["write-doc"]) await writeDoc(text);
    return 0;
  }
  requireRoot("the capture benchmark (the agent loads BPF programs)");
  const baseDir = values.base ? Deno.realPathSync(values.base) : undefined;
  if (baseDir && !existsFile(`${baseDir}/src/main.ts`)) {
    throw new Error(`--base: no src/main.ts in ${baseDir}`);
  }
  if (baseDir && values.clickhouse) throw new Error("--base and --clickhouse: one third variant at a time");
  requireTool("wrk", "wrk");
  requirePortsFree([METRICS_PORT]);
  let facts = await machineFacts();
  if (values["tls-probes"]) {
    return await httpsProbesBench(
      { ...o, requests: int("requests", values.requests, 1) },
      facts,
      values["write-doc"] === true,
    );
  }
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  console.error(`machine: ${facts}`);

  // --veth: wrk in a network namespace, its packets into nginx's over a veth pair as from a NIC: tc ingress then
  // sees the client's packets only (on lo it sees both directions, the server's replies too).
  await using ns = o.veth ? await createNetns("ja4bench") : undefined;
  const client: Client = ns ? { host: ns.hostAddr, netns: ns.name } : { host: "127.0.0.1" };
  await using ng = await startNginx({
    port: HTTP_PORT,
    tlsPort: TLS_PORT,
    workers: o.workers,
    // HTTP/2 only for the h2 mode (wrk never asks for it; the https figures stay those of HTTP/1.1 alone).
    http2: o.modes.includes("h2"),
    // h2load does not reconnect after nginx's GOAWAY at keepalive_requests (1000): with h2, no limit.
    ...(o.modes.includes("h2") ? { keepaliveRequests: 100_000_000 } : {}),
    ...(ns ? { hosts: ["127.0.0.1", ns.hostAddr] } : {}),
  });
  if (values.sink !== "file" && values.sink !== "clickhouse") throw new Error("--sink: file or clickhouse");
  const allCh = values.sink === "clickhouse";
  if (allCh && values.clickhouse) throw new Error("--sink clickhouse and --clickhouse: one or the other");
  const ch = values.clickhouse || allCh ? await startClickHouse() : undefined;
  try {
    return await measure(ch);
  } finally {
    await ch?.close();
  }

  async function measure(ch: ClickHouseServer | undefined): Promise<number> {
    const summaries: ModeSummary[] = [];
    const baseSummaries: ModeSummary[] = [];
    for (const mode of o.modes) {
      const pairs = isTls(mode) ? o.httpsPairs : o.pairs;
      if (pairs === 0) continue;
      // Warm-up (not counted): page cache, TLS session set-up paths, CPU frequency.
      await loader(mode)({
        url: clientUrl(client, mode),
        netns: client.netns,
        headers: mode === "close" ? ["Connection: close"] : [],
        threads: o.threads,
        connections: o.connections,
        duration: 3,
      });
      const runs: RunFigures[] = [];
      for (let p = 0; p < pairs; p++) {
        // off, this agent (, the earlier one with --base); reversed every other pair (ABBA / ABCCBA).
        const one: ("off" | "on" | "base" | "ch")[] = values["no-agent"]
          ? ["off", "off"]
          : baseDir
          ? ["off", "on", "base"]
          : ch
          ? ["off", "on", "ch"]
          : ["off", "on"];
        const order = p % 2 === 0 ? one : [...one].reverse();
        for (const v of order) {
          const on = v !== "off";
          const r = await oneRun(
            ng,
            mode,
            on,
            o,
            v === "base" ? baseDir : undefined,
            client,
            v === "ch" || (on && allCh) ? ch : undefined,
          );
          if (v === "ch") r.ch = true;
          runs.push(r);
          const a = r.agent;
          console.error(
            `${mode} pair ${p + 1} agent=${v === "base" || v === "ch" ? v : on ? "on " : "off"} ${
              fmt(r.wrk.requestsPerSec)
            } req/s, ${fmt(r.wrk.requests)} wrk / ${fmt(r.logged)} logged` +
              (a
                ? `, ${fmt(a.rows)} rows (${
                  pct(a.rows / r.logged, 3)
                }), bpf drops ${a.bpfDrops}, rows dropped ${a.rowsDropped}, agent ${
                  fmt(a.cpuUs / (r.measured ?? r.logged), 1)
                } µs/req, RSS ${fmt(a.peakRssKb / 1024)} MiB, ready in ${fmt(a.readyMs)} ms`
                : ""),
          );
          for (const c of a?.bpf ?? []) {
            console.error(
              `  bpf ${c.name.padEnd(16)} ${c.runsPerRequest.toFixed(2)} runs/req × ${fmt(c.nsPerRun)} ns = ${
                fmt(c.nsPerRequest)
              } ns/req`,
            );
          }
          if (a && (values.verbose || a.rows < r.logged)) {
            console.error(`  ${a.readyLine.trim()}\n  counters ${JSON.stringify(a.counters)}`);
            for (const w of a.warnings) console.error(`  ${w}`);
          }
          if (r.wrk.non2xx || Object.values(r.wrk.socketErrors).some((x) => x > 0)) {
            console.error(
              `  wrk: ${r.wrk.non2xx} non-2xx, socket errors ${JSON.stringify(r.wrk.socketErrors)}`,
            );
          }
        }
      }
      if (!values["no-agent"]) {
        summaries.push(summarize(mode, runs.filter((r) => !r.base && !r.ch)));
        if (baseDir || values.clickhouse) {
          baseSummaries.push(summarize(mode, runs.filter((r) => !r.withAgent || r.base || r.ch)));
        }
      } else console.log(runs.map((r) => `${mode}: ${fmt(r.wrk.requestsPerSec)} req/s`).join("\n"));
    }
    if (values["no-agent"]) return 0;
    const loadEnd = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
    facts += `; at the end: load average ${loadEnd}, other agents ${otherAgents()}`;
    let text = section(date, facts, o, summaries);
    if (baseDir) text += "\n" + sideBySide(summaries, baseSummaries);
    if (values.clickhouse) text += "\n" + sideBySide(baseSummaries, summaries, CH_THIRD);
    console.log(text);
    if (values.json) {
      await Deno.writeTextFile(
        values.json,
        JSON.stringify({ date, facts, o, summaries, baseSummaries }, null, 1),
      );
    }
    if (values["write-doc"]) await writeDoc(text);
    return 0;
  }
}

if (import.meta.main) Deno.exit(await main());
