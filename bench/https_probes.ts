/**
 * HTTPS: who pays for the plaintext probes (run through `deno task bench-capture --tls-probes`).
 *
 * Three variants in ABCCBA order per pair: no agent; the agent with the probes on the servers' own files
 * (`uprobes.tls_probes: auto`, the default); the agent with the probes on libssl (`library`, the former
 * design). Each run: first the bystander — a Python `ssl` client doing 3,000 requests on one keep-alive
 * connection to the same nginx, while the agent is idle — whose own CPU (user/system, getrusage around
 * the loop) shows what the probes cost a process that is not the server; then wrk over TLS against nginx
 * (keep-alive, full speed). Traps are the agent's own per-process
 * probe hit counter (BPF map `ssl_hits`, entry + return runs). Rows are counted against nginx's access log.
 */
import { cpuSplitUs } from "./proc_cpu.ts";
import { startNginx, type WebServer } from "../tests/helpers/servers.ts";
import { wrk, type WrkResult } from "../tests/helpers/clients.ts";
import { type RunningAgent, startAgent } from "../tests/helpers/agent.ts";
import { delay, makeTempDir, requirePortsFree } from "../tests/helpers/proc.ts";
import {
  bystander,
  type BystanderResult,
  hitsOf,
  sslHits,
  startBystanderServer,
} from "../tests/helpers/tls_load.ts";
import { makeCert } from "../tests/helpers/certs.ts";

const HTTP_PORT = 22080;
const TLS_PORT = 22443;
const METRICS_PORT = 22435;
/** A Python TLS server no agent follows: the bystander's second peer (nothing on its path is traced). */
const OTHER_TLS_PORT = 22445;
const DOC = new URL("../docs/performance.md", import.meta.url);
export const TLS_HEADING = "## HTTPS probes: who pays (nginx + wrk over TLS, and a bystander TLS client)";

type Variant = "off" | "auto" | "library";

interface Cpu {
  user: number;
  sys: number;
}

interface ProbeRun {
  variant: Variant;
  wrk: WrkResult;
  /** nginx's access-log lines of the wrk run / of the bystander run. */
  logged: number;
  bystanderLogged: number;
  /** nginx master + workers CPU over the wrk run, µs. */
  nginx: Cpu;
  /** Traps of nginx during the wrk run (agent on). */
  nginxTraps?: number;
  by: BystanderResult;
  /** Traps of the bystander process (agent on). */
  byTraps?: number;
  /** The same client against the unfollowed Python TLS server. */
  by2: BystanderResult;
  by2Traps?: number;
  /** Rows for the TLS port (wrk + bystander). */
  rows?: number;
  readyLine?: string;
}

function cpuOf(pid: number): Cpu {
  return cpuSplitUs(pid);
}

function nginxCpu(ng: WebServer): Cpu {
  const p = ng.pids();
  return [p.master, ...p.workers].map(cpuOf).reduce((a, b) => ({
    user: a.user + b.user,
    sys: a.sys + b.sys,
  }));
}

async function logLines(path: string): Promise<number> {
  const t = await Deno.readTextFile(path).catch(() => "");
  return t ? t.split("\n").length - 1 : 0;
}

async function rowsFor(agent: RunningAgent, port: number): Promise<number> {
  return (await agent.rows()).filter((r) => r.dst_port === port).length;
}

async function oneProbeRun(
  ng: WebServer,
  variant: Variant,
  o: { duration: number; threads: number; connections: number; requests: number },
): Promise<ProbeRun> {
  let agent: RunningAgent | undefined;
  const dir = variant === "off" ? "" : await makeTempDir("ja4ebpf-tlsbench-");
  try {
    if (variant !== "off") {
      agent = await startAgent({
        dir,
        metricsPort: METRICS_PORT,
        config: {
          uprobes: { max_retries: 30, retry_interval_sec: 2, tls_probes: variant },
          capture: { hold_ms: 2000, ports: [HTTP_PORT, TLS_PORT] },
          output: { file: { max_size_mb: 1048576, max_files: 1 }, clickhouse: { spool_dir: "" } },
          metrics: { enabled: true },
        },
        readyTimeoutMs: 90_000,
      });
    }
    const pids = () => [ng.pids().master, ...ng.pids().workers];
    // The bystander first, while the agent is idle: after wrk, the agent's backlog of rows competes for the
    // same 2 CPUs and would show in the bystander's figures without being a probe cost.
    await delay(1000);
    const logB = await logLines(ng.accessLogPath);
    const by = await bystander(TLS_PORT, o.requests, "/bystander");
    await delay(300);
    const log0 = await logLines(ng.accessLogPath);
    const by2 = await bystander(OTHER_TLS_PORT, o.requests, "/");
    const hits0 = agent ? hitsOf(await sslHits(agent.pid), pids()) : 0;
    const c0 = nginxCpu(ng);
    const w = await wrk({
      url: ng.tlsUrl!,
      threads: o.threads,
      connections: o.connections,
      duration: o.duration,
    });
    const c1 = nginxCpu(ng);
    const hits1 = agent ? hitsOf(await sslHits(agent.pid), pids()) : 0;
    await delay(300);
    const log1 = await logLines(ng.accessLogPath);
    const log2 = log1;
    const run: ProbeRun = {
      variant,
      wrk: w,
      logged: log1 - log0,
      bystanderLogged: log0 - logB,
      nginx: { user: c1.user - c0.user, sys: c1.sys - c0.sys },
      by,
      by2,
    };
    if (agent) {
      run.nginxTraps = hits1 - hits0;
      const hits = await sslHits(agent.pid);
      run.byTraps = hits.get(by.pid) ?? 0;
      run.by2Traps = hits.get(by2.pid) ?? 0;
      run.readyLine = agent.readyLine;
      // Every request of the run (wrk's and the bystander's) should be a row once the agent drained.
      const want = log2 - logB;
      const deadline = Date.now() + 60_000;
      let rows = await rowsFor(agent, TLS_PORT);
      while (rows < want && Date.now() < deadline) {
        await delay(1000);
        rows = await rowsFor(agent, TLS_PORT);
      }
      await agent.stop("SIGTERM", 30_000);
      run.rows = await rowsFor(agent, TLS_PORT);
    }
    return run;
  } finally {
    await agent?.close();
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1);
const f = (x: number, d = 1) =>
  Number.isFinite(x)
    ? x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d })
    : "—";

interface VariantSummary {
  variant: Variant;
  rps: number;
  nginxUser: number;
  nginxSys: number;
  traps: number;
  byUser: number;
  bySys: number;
  byTraps: number;
  byArea: boolean;
  /** The client against the unfollowed server. */
  by2User: number;
  by2Sys: number;
  by2Traps: number;
  rows: number;
  requests: number;
}

function summarize(runs: ProbeRun[], requests: number): VariantSummary[] {
  return (["off", "auto", "library"] as Variant[]).map((variant) => {
    const rs = runs.filter((r) => r.variant === variant);
    const reqs = rs.reduce((s, r) => s + r.wrk.requests, 0);
    const logged = rs.reduce((s, r) => s + r.logged + r.bystanderLogged, 0);
    return {
      variant,
      rps: mean(rs.map((r) => r.wrk.requestsPerSec)),
      nginxUser: rs.reduce((s, r) => s + r.nginx.user, 0) / reqs,
      nginxSys: rs.reduce((s, r) => s + r.nginx.sys, 0) / reqs,
      traps: rs.reduce((s, r) => s + (r.nginxTraps ?? 0), 0) /
        Math.max(1, rs.reduce((s, r) => s + r.logged, 0)),
      byUser: mean(rs.map((r) => r.by.user_s * 1e6 / requests)),
      bySys: mean(rs.map((r) => r.by.sys_s * 1e6 / requests)),
      byTraps: mean(rs.map((r) => (r.byTraps ?? 0) / requests)),
      byArea: rs.some((r) => r.by.uprobes_area),
      by2User: mean(rs.map((r) => r.by2.user_s * 1e6 / requests)),
      by2Sys: mean(rs.map((r) => r.by2.sys_s * 1e6 / requests)),
      by2Traps: mean(rs.map((r) => (r.by2Traps ?? 0) / requests)),
      rows: rs.reduce((s, r) => s + (r.rows ?? 0), 0),
      requests: logged,
    };
  });
}

function render(
  date: string,
  facts: string,
  o: { duration: number; pairs: number; requests: number },
  runs: ProbeRun[],
) {
  const ss = summarize(runs, o.requests);
  const off = ss.find((s) => s.variant === "off")!;
  const by = (s: VariantSummary) => s.byUser + s.bySys;
  const by2 = (s: VariantSummary) => s.by2User + s.by2Sys;
  const lines = [
    TLS_HEADING,
    "",
    `Measured ${date} with \`deno task bench-capture --tls-probes --duration ${o.duration} --pairs ${o.pairs} --requests ${o.requests}\``,
    `(bench/https_probes.ts). Machine: ${facts}.`,
    "",
    "Variants in ABCCBA order per pair: no agent; probes on the server's own file (`uprobes.tls_probes: auto`,",
    "the default: nginx's `ngx_ssl_recv`); probes on libssl (`library`, the former design). Each run: first the",
    `bystander, a Python \`ssl\` client doing ${o.requests} requests to nginx on one keep-alive connection`,
    "while the agent is idle (its own CPU by getrusage around the loop); then `wrk` over TLS 1.3 against nginx",
    `(2 workers, keep-alive, ${o.duration} s). Traps: the agent's per-process probe hit counter (entry + return`,
    "program runs). wrk links libssl too, so with probes on libssl it traps on its own reads as well. The",
    'same client then talks to a Python TLS server no agent follows ("unfollowed peer"): nothing on its path',
    "is traced, so what it pays is the agent's tax on unrelated processes alone.",
    "",
    "| variant | nginx req/s | ratio to no agent | nginx CPU µs/req user + sys | nginx traps/request | bystander → nginx CPU µs/req user + sys | ratio (goal ≤ 1.05) | traps/request | `[uprobes]` | bystander → unfollowed peer CPU µs/req | ratio (goal ≤ 1.05) | traps/request | rows / requests |",
    "|---|---:|---:|---|---:|---|---:|---:|---|---|---:|---:|---:|",
  ];
  for (const s of ss) {
    const on = s.variant !== "off";
    lines.push(
      `| ${s.variant === "off" ? "no agent" : s.variant} | ${f(s.rps, 0)} | ${f(s.rps / off.rps, 3)} | ${
        f(s.nginxUser)
      } + ${f(s.nginxSys)} | ${on ? f(s.traps, 2) : ""} | ${f(s.byUser)} + ${f(s.bySys)} | ${
        f(by(s) / by(off), 3)
      } | ${on ? f(s.byTraps, 2) : ""} | ${on ? (s.byArea ? "yes" : "no") : ""} | ${f(s.by2User)} + ${
        f(s.by2Sys)
      } | ${f(by2(s) / by2(off), 3)} | ${on ? f(s.by2Traps, 2) : ""} | ${
        on
          ? `${s.rows.toLocaleString("en-US")} / ${s.requests.toLocaleString("en-US")} = ${
            (100 * s.rows / Math.max(1, s.requests)).toFixed(3)
          } %`
          : ""
      } |`,
    );
  }
  lines.push(
    "",
    "Runs:",
    "",
    "| # | variant | wrk req/s | logged | nginx traps | bystander user s | sys s | traps | → unfollowed user s | sys s | traps | rows |",
  );
  lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  runs.forEach((r, i) =>
    lines.push(
      `| ${i + 1} | ${r.variant} | ${f(r.wrk.requestsPerSec, 0)} | ${r.logged + r.bystanderLogged} | ${
        r.nginxTraps ?? ""
      } | ${r.by.user_s.toFixed(3)} | ${r.by.sys_s.toFixed(3)} | ${r.byTraps ?? ""} | ${
        r.by2.user_s.toFixed(3)
      } | ${r.by2.sys_s.toFixed(3)} | ${r.by2Traps ?? ""} | ${r.rows ?? ""} |`,
    )
  );
  return lines.join("\n") + "\n";
}

async function writeSection(text: string): Promise<void> {
  let doc = await Deno.readTextFile(DOC);
  const start = doc.indexOf(TLS_HEADING + "\n");
  if (start < 0) doc = doc.trimEnd() + "\n\n" + text;
  else {
    const next = doc.indexOf("\n## ", start + TLS_HEADING.length);
    doc = doc.slice(0, start) + text + (next < 0 ? "" : "\n" + doc.slice(next + 1));
  }
  await Deno.writeTextFile(DOC, doc.trimEnd() + "\n");
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", DOC.pathname] }).output();
}

/** The --tls-probes benchmark; prints the section and writes it into docs/performance.md with writeDoc. */
export async function httpsProbesBench(
  o: { duration: number; pairs: number; threads: number; connections: number; requests: number },
  facts: string,
  writeDoc: boolean,
): Promise<number> {
  requirePortsFree([METRICS_PORT]);
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  // keepalive_requests above the bystander's count: its requests stay on one connection.
  await using ng = await startNginx({
    port: HTTP_PORT,
    tlsPort: TLS_PORT,
    workers: 2,
    http2: false,
    keepaliveRequests: Math.max(1000, o.requests + 1000),
  });
  await using cert = await makeCert();
  await using _other = await startBystanderServer(OTHER_TLS_PORT, cert.certPath, cert.keyPath);
  await wrk({ url: ng.tlsUrl!, threads: o.threads, connections: o.connections, duration: 2 }); // warm-up
  await bystander(TLS_PORT, 300, "/warm");
  const runs: ProbeRun[] = [];
  const abc: Variant[] = ["off", "auto", "library"];
  for (let p = 0; p < o.pairs; p++) {
    for (const v of [...abc, ...[...abc].reverse()]) {
      const r = await oneProbeRun(ng, v, o);
      runs.push(r);
      console.error(
        `pair ${p + 1} ${v.padEnd(7)} ${f(r.wrk.requestsPerSec, 0)} req/s; nginx traps/req ${
          r.nginxTraps === undefined ? "-" : f(r.nginxTraps / r.logged, 2)
        }; bystander ${r.by.user_s.toFixed(3)} + ${r.by.sys_s.toFixed(3)} s, traps ${r.byTraps ?? "-"}, ` +
          `unfollowed peer ${r.by2.user_s.toFixed(3)} + ${r.by2.sys_s.toFixed(3)} s, traps ${
            r.by2Traps ?? "-"
          }, ` +
          `[uprobes] ${r.by.uprobes_area}; rows ${r.rows ?? "-"} / ${r.logged + r.bystanderLogged}`,
      );
    }
  }
  const text = render(date, facts, o, runs);
  console.log(text);
  if (writeDoc) await writeSection(text);
  return 0;
}
