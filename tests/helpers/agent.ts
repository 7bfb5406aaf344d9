/**
 * The agent as a test runs it in production: `deno run -A src/main.ts run --config FILE` as a subprocess with
 * a temp config (file sink, own metrics port), `ready` awaited on stderr, rows read back from the file sink,
 * /metrics scraped, stopped with a signal. The BPF program ids it holds are read from /proc/PID/fdinfo so
 * tests can tell its programs and tc filters from those of other agents running on the same host.
 */
import { stringify } from "yaml";
import { type Row, rowFromJson } from "../../src/sink/row.ts";
import { parsePrometheusText } from "../../src/metrics/registry.ts";
import { tracedKind } from "../../src/bpf/maps.ts";
import { delay, HarnessError, makeTempDir, requireRoot, requireTool, runOk, waitUntil } from "./proc.ts";

export const MAIN_TS = new URL("../../src/main.ts", import.meta.url).pathname;
/**
 * The agent startAgent runs: this checkout's, or another checkout's `src/main.ts` (JA4EBPF_AGENT_MAIN) so a
 * benchmark can measure an earlier version side by side in the same run.
 */
const AGENT_MAIN = Deno.env.get("JA4EBPF_AGENT_MAIN") || MAIN_TS;

/** The V8 flags a checkout packages its agent with (its scripts/agent-v8-flags), comma-joined for --v8-flags. */
export function agentV8Flags(file: string | URL): string {
  return Deno.readTextFileSync(file).trim().split(/\s+/).join(",");
}

/** This checkout's. */
export const AGENT_V8_FLAGS = agentV8Flags(new URL("../../scripts/agent-v8-flags", import.meta.url));

/** The `deno run` flags a checkout packages its agent with (its scripts/agent-deno-flags; [] without the file). */
export function agentDenoFlags(file: string | URL): string[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(file);
  } catch {
    return [];
  }
  return text.split("\n").map((l) => l.replace(/#.*/, "")).join(" ").split(/\s+/).filter((f) => f !== "");
}

/** This checkout's. */
export const AGENT_DENO_FLAGS = agentDenoFlags(new URL("../../scripts/agent-deno-flags", import.meta.url));

/** The environment a checkout packages its agent with (its scripts/agent-env; {} for one without the file). */
export function agentEnv(file: string | URL): Record<string, string> {
  let text = "";
  try {
    text = Deno.readTextFileSync(file);
  } catch {
    return {};
  }
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]] = m[2];
  }
  return env;
}

/** This checkout's. */
export const AGENT_ENV = agentEnv(new URL("../../scripts/agent-env", import.meta.url));

/**
 * startAgent's options for another checkout's agent (benchmarks' --base): its src/main.ts, and the V8 flags,
 * `deno run` flags and environment it packages (none for a checkout older than those files).
 */
export function checkoutAgent(
  dir: string,
): { main: string; v8Flags: string; denoFlags: string[]; env: Record<string, string> } {
  let v8Flags = "";
  try {
    v8Flags = agentV8Flags(`${dir}/scripts/agent-v8-flags`);
  } catch { /* an older checkout without the file */ }
  return {
    main: `${dir}/src/main.ts`,
    v8Flags,
    denoFlags: agentDenoFlags(`${dir}/scripts/agent-deno-flags`),
    env: agentEnv(`${dir}/scripts/agent-env`),
  };
}

/** Nested plain objects, merged key by key into the base config. */
export type ConfigPatch = { [k: string]: unknown };

export interface AgentStartOptions {
  /** Another checkout's src/main.ts to run (benchmarks: an earlier version side by side); default AGENT_MAIN. */
  main?: string;
  /** Merged over the test base config (file sink in the temp dir, stdout off, metrics on metricsPort). */
  config?: ConfigPatch;
  /** Metrics port; default 24435. */
  metricsPort?: number;
  /** Milliseconds to wait for the `ready` line; default 45000. */
  readyTimeoutMs?: number;
  /** Reuse this directory (config, rows file, spool) instead of a new temp dir (restart tests). */
  dir?: string;
  /** Environment beside NO_COLOR (default: this checkout's scripts/agent-env). */
  env?: Record<string, string>;
  /** V8 flags for the agent process (benchmarks use the packaged ones). */
  v8Flags?: string;
  /** `deno run` flags (default: this checkout's scripts/agent-deno-flags; e.g. --cpu-prof for a profile). */
  denoFlags?: string[];
  /** The runtime to run the agent with (default: this process's, Deno.execPath()). */
  runtime?: string;
  /** A file the agent's stdout goes to (V8's --trace-gc prints there); default: discarded. */
  stdoutPath?: string;
}

export interface AgentExit {
  code: number;
  signal: Deno.Signal | null;
}

export interface RunningAgent extends AsyncDisposable {
  pid: number;
  dir: string;
  configPath: string;
  rowsPath: string;
  metricsUrl: string;
  /** The `ready` log line. */
  readyLine: string;
  /** hook → method from the ready line (`capture=nginx=tracepoint apache=uprobe …`). */
  capture: Record<string, string>;
  /** Everything the agent wrote to stderr so far. */
  stderr(): string;
  /** Rows in the file sink so far (a partly written last line is skipped). */
  rows(): Promise<Row[]>;
  /** Polls rows() until pred holds for at least n of them; returns those. */
  waitForRows(pred: (r: Row) => boolean, n: number, timeoutMs?: number): Promise<Row[]>;
  /** Resolves once a stderr line matches re (returns the line). */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** GET /metrics as text. */
  scrape(): Promise<string>;
  /** GET /metrics parsed (series → value). */
  metrics(): Promise<Map<string, number>>;
  /** Ids of the BPF programs this process holds open (fds and links). */
  progIds(): number[];
  signal(sig: Deno.Signal): void;
  /** Sends sig (default SIGTERM) and waits for the exit (SIGKILL after graceMs). */
  stop(sig?: Deno.Signal, graceMs?: number): Promise<AgentExit>;
  /** Exit status once the process ended. */
  status: Promise<AgentExit>;
  /** stop() if running, then remove the temp dir (when it was ours). */
  close(): Promise<void>;
}

function merge(base: ConfigPatch, patch: ConfigPatch): ConfigPatch {
  const out: ConfigPatch = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    const b = out[k];
    out[k] =
      v && typeof v === "object" && !Array.isArray(v) && b && typeof b === "object" && !Array.isArray(b)
        ? merge(b as ConfigPatch, v as ConfigPatch)
        : v;
  }
  return out;
}

/** The test base config plus patch, as the agent would read it. */
export function agentConfig(dir: string, metricsPort: number, patch: ConfigPatch = {}): ConfigPatch {
  return merge({
    uprobes: { max_retries: 30, retry_interval_sec: 1 },
    capture: { hold_ms: 300 },
    output: {
      stdout: false,
      file: { path: `${dir}/rows.jsonl` },
      clickhouse: { spool_dir: `${dir}/spool` },
    },
    metrics: { listen: `127.0.0.1:${metricsPort}` },
  }, patch);
}

/** Parses the file sink's JSON lines (absent values, left out by the sinks, read as ""). */
export function parseRows(text: string): Row[] {
  const out: Row[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(rowFromJson(JSON.parse(line)));
    } catch { /* last line still being written */ }
  }
  return out;
}

/** Ids named by `key:` lines of a process's fdinfo files (`prog_id`, `map_id`), sorted. */
function fdinfoIds(pid: number, key: "prog_id" | "map_id"): number[] {
  const ids = new Set<number>();
  let entries: Deno.DirEntry[] = [];
  try {
    entries = [...Deno.readDirSync(`/proc/${pid}/fdinfo`)];
  } catch {
    return [];
  }
  const re = new RegExp(`^${key}:\\s*(\\d+)`, "m");
  for (const e of entries) {
    try {
      const m = re.exec(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${e.name}`));
      if (m) ids.add(Number(m[1]));
    } catch { /* fd closed meanwhile */ }
  }
  return [...ids].sort((a, b) => a - b);
}

/** BPF program ids referenced by a process's fds (program fds and link fds both show `prog_id:`). */
export function bpfProgIds(pid: number): number[] {
  return fdinfoIds(pid, "prog_id");
}

export interface ProgCounters {
  name: string;
  runs: number;
  ns: number;
}

/**
 * Turns the kernel's per-program run statistics on (kernel.bpf_stats_enabled: `run_cnt`, `run_time_ns`);
 * returns a function that puts the old setting back.
 */
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

/**
 * Runs so far of the agent's program `name` (with the statistics on, else 0): whether a program the agent
 * loaded is attached, whatever the kernel's way of attaching it (link or perf event).
 */
export function progRuns(agentPid: number, name: string): number {
  requireTool("bpftool", "bpftool");
  const mine = [...progCounters(agentPid).values()].filter((p) => p.name === name);
  if (mine.length === 0) throw new HarnessError(`agent ${agentPid} holds no program ${name}`);
  return mine.reduce((n, p) => n + p.runs, 0);
}

/** BPF map ids referenced by a process's fds (`map_id:` in fdinfo). */
export function bpfMapIds(pid: number): number[] {
  return fdinfoIds(pid, "map_id");
}

/** A u32 from bpftool's JSON: a number (BTF-formatted) or little-endian hex byte strings. */
function u32Of(v: unknown): number {
  if (typeof v === "number") return v;
  if (!Array.isArray(v)) throw new HarnessError(`bpftool: unexpected value ${JSON.stringify(v)}`);
  return v.slice(0, 4).reduceRight((acc: number, b: string) => acc * 256 + parseInt(b, 16), 0);
}

/** The id of the map `name` the agent's process holds (an agent elsewhere on the host has its own). */
async function agentMapId(agentPid: number, name: string): Promise<number> {
  const bpftool = requireTool("bpftool", "bpftool");
  const held = new Set(bpfMapIds(agentPid));
  // One listing of every map on the host, then the one this process holds.
  const maps = JSON.parse(await runOk([bpftool, "-j", "map", "show"])) as { id: number; name?: string }[];
  const id = maps.find((m) => held.has(m.id) && m.name === name)?.id;
  if (id === undefined) throw new HarnessError(`agent ${agentPid} holds no ${name} map`);
  return id;
}

/** Every entry of the map `name` the agent's process holds, read with bpftool (raw key and value). */
async function agentMap(agentPid: number, name: string): Promise<{ key: unknown; value: unknown }[]> {
  const id = await agentMapId(agentPid, name);
  return JSON.parse(await runOk([requireTool("bpftool", "bpftool"), "-j", "map", "dump", "id", String(id)]));
}

/**
 * The agent's traced_pids map (pid → server kind), read with bpftool from the map its process holds: the
 * kernel-side truth of which server processes it follows (an agent elsewhere on the host has its own map).
 */
export async function tracedPids(agentPid: number): Promise<Map<number, number>> {
  const dump = await agentMap(agentPid, "traced_pids");
  return new Map(dump.map((e) => [u32Of(e.key), tracedKind(u32Of(e.value))]));
}

/** The bytes of element `key` (a u32 index) of the map `name` the agent's process holds, read with bpftool. */
export async function agentMapElement(agentPid: number, name: string, key: number): Promise<number[]> {
  const id = await agentMapId(agentPid, name);
  const k = [key & 0xff, (key >> 8) & 0xff, (key >> 16) & 0xff, key >>> 24].map(String);
  const got = JSON.parse(
    await runOk([requireTool("bpftool", "bpftool"), "-j", "map", "lookup", "id", String(id), "key", ...k]),
  ) as { value: string[] };
  return got.value.map((x) => parseInt(x, 16));
}

/** Whether `port` is in the agent's listen_ports (the server ports whose SYNs and first bytes tc reports). */
export async function listensOn(agentPid: number, port: number): Promise<boolean> {
  return (await agentMapElement(agentPid, "listen_ports", port))[0] === 1;
}

export async function startAgent(opts: AgentStartOptions = {}): Promise<RunningAgent> {
  requireRoot("the agent");
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? await makeTempDir("ja4ebpf-agent-");
  const metricsPort = opts.metricsPort ?? 24435;
  const configPath = `${dir}/config.yaml`;
  const cfg = agentConfig(dir, metricsPort, opts.config);
  await Deno.writeTextFile(configPath, stringify(cfg));
  const rowsPath = ((cfg.output as ConfigPatch).file as ConfigPatch).path as string;

  const child = new Deno.Command(opts.runtime ?? Deno.execPath(), {
    args: [
      "run",
      "-A",
      ...(opts.v8Flags ? [`--v8-flags=${opts.v8Flags}`] : []),
      ...(opts.denoFlags ?? AGENT_DENO_FLAGS),
      opts.main ?? AGENT_MAIN,
      "run",
      "--config",
      configPath,
    ],
    env: { ...(opts.env ?? AGENT_ENV), NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdin: "null",
    stdout: opts.stdoutPath ? "piped" : "null",
    stderr: "piped",
  }).spawn();
  if (opts.stdoutPath) {
    const f = await Deno.open(opts.stdoutPath, { write: true, create: true, truncate: true });
    child.stdout.pipeTo(f.writable).catch(() => {});
  }
  let err = "";
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const check = () => {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const line = err.split("\n").find((l) => waiters[i].re.test(l));
      if (line !== undefined) {
        waiters[i].resolve(line);
        waiters.splice(i, 1);
      }
    }
  };
  const drained = (async () => {
    const dec = new TextDecoder();
    for await (const c of child.stderr) {
      err += dec.decode(c, { stream: true });
      check();
    }
  })().catch(() => {});
  const status: Promise<AgentExit> = child.status.then(async (s) => {
    await drained;
    return { code: s.code, signal: s.signal };
  });
  let exited = false;
  status.then(() => exited = true);

  const waitForLog = async (re: RegExp, timeoutMs = 15_000): Promise<string> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const found = new Promise<string>((resolve) => {
      waiters.push({ re, resolve });
      check();
    });
    const out = await Promise.race([
      found,
      status.then((s) => {
        throw new HarnessError(
          `agent exited (code ${s.code}) before a log line matching ${re}:\n${err.slice(-3000)}`,
        );
      }),
      new Promise<never>((_, rej) =>
        timer = setTimeout(
          () =>
            rej(
              new HarnessError(
                `no agent log line matching ${re} after ${timeoutMs} ms:\n${err.slice(-3000)}`,
              ),
            ),
          timeoutMs,
        )
      ),
    ]).finally(() => clearTimeout(timer));
    return out;
  };

  const stop = async (sig: Deno.Signal = "SIGTERM", graceMs = 15_000): Promise<AgentExit> => {
    if (!exited) {
      try {
        child.kill(sig);
      } catch { /* gone */ }
    }
    const t = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }, graceMs);
    const s = await status;
    clearTimeout(t);
    return s;
  };
  const close = async () => {
    await stop();
    if (ownDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  };

  let readyLine: string;
  try {
    readyLine = await waitForLog(/ INFO ready |"msg":"ready"/, opts.readyTimeoutMs ?? 45_000);
  } catch (e) {
    await close();
    throw e;
  }
  // Plain log lines do not quote values: the capture list ("nginx=tracepoint apache=uprobe …") runs up to
  // the next field, buffer=.
  const captureText = readyLine.trimStart().startsWith("{")
    ? String(JSON.parse(readyLine).capture ?? "")
    : /capture=(.*?) buffer=/.exec(readyLine)?.[1] ?? "";
  const capture: Record<string, string> = {};
  for (const m of captureText.matchAll(/(\w+)=(\w+)/g)) capture[m[1]] = m[2];

  const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  const rows = async () => parseRows(await Deno.readTextFile(rowsPath).catch(() => ""));
  const scrape = async () => {
    const r = await fetch(metricsUrl);
    const t = await r.text();
    if (!r.ok) throw new HarnessError(`GET ${metricsUrl}: ${r.status} ${t.slice(0, 300)}`);
    return t;
  };
  return {
    pid: child.pid,
    dir,
    configPath,
    rowsPath,
    metricsUrl,
    readyLine,
    capture,
    stderr: () => err,
    rows,
    async waitForRows(pred, n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      let got: Row[] = [];
      while (Date.now() < deadline) {
        got = (await rows()).filter(pred);
        if (got.length >= n) return got;
        await delay(100);
      }
      // Other servers on the host are traced too: a flood there shows up as ring-buffer drops here.
      const m = await scrape().then(
        (t) => t.split("\n").filter((l) => /^ja4ebpf_(events_total|bpf_drops_total|rows_captured)/.test(l)),
        () => [],
      );
      throw new HarnessError(
        `${got.length} of ${n} expected rows after ${timeoutMs} ms; metrics:\n${m.join("\n")}\n` +
          `agent stderr:\n${err.slice(-3000)}`,
      );
    },
    waitForLog,
    scrape,
    metrics: async () => parsePrometheusText(await scrape()),
    progIds: () => bpfProgIds(child.pid),
    signal(sig) {
      child.kill(sig);
    },
    stop,
    status,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Resolves once every row the agent captured has reached the file sink: nothing held for correlation or
 * batched (`ja4ebpf_rows_spooled` 0) and the captured count no longer ahead of the file. A row emitted twice
 * (a duplicate) would be in the file by then. `context` adds to the timeout's message.
 */
export async function rowsSettled(agent: RunningAgent, context: () => string = () => ""): Promise<void> {
  let last = "";
  await waitUntil(
    async () => {
      const m = await agent.metrics();
      const captured = m.get("ja4ebpf_rows_captured_total") ?? 0;
      const dropped = [...m].filter(([k]) => k.startsWith("ja4ebpf_rows_dropped_total")).reduce(
        (a, [, v]) => a + v,
        0,
      );
      const inFile = (await agent.rows()).length;
      last = `spooled ${
        m.get("ja4ebpf_rows_spooled")
      }, captured ${captured}, dropped ${dropped}, in the file ${inFile}`;
      return m.get("ja4ebpf_rows_spooled") === 0 && inFile >= captured - dropped;
    },
    10_000,
    "the agent's captured rows all in the file sink",
    () => Promise.resolve(`${last}\n${context()}`),
  );
}
