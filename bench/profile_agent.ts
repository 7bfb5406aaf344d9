/**
 * A CPU profile of the running agent under load: nginx (1 worker) + the agent (packaged V8 flags, file sink)
 * + wrk for a while, sampled by `perf record -e cpu-clock` (a timer, no PMU needed) with V8's
 * --perf-basic-prof symbol map; samples are split by the stages of bench/stages.ts (by source file).
 * Not V8's own --cpu-prof: its SIGPROF sampling interrupts the BPF verifier at load (EAGAIN, retried until
 * libbpf gives up), so the agent cannot start under it.
 *
 *   deno run -A bench/profile_agent.ts [--mode close|http|browser] [--seconds 10] [--warmup 8] [--dir bench/out/agent-prof]
 *
 * --warmup: seconds of the same load before sampling starts, so that the profile is of the steady state (V8
 * compiles the hot path during the agent's first seconds under load).
 */
import { parseArgs } from "node:util";
import { AGENT_DENO_FLAGS, AGENT_V8_FLAGS, startAgent } from "../tests/helpers/agent.ts";
import { startNginx } from "../tests/helpers/servers.ts";
import { browserScript, wrk } from "../tests/helpers/clients.ts";
import { requireRoot } from "../tests/helpers/proc.ts";
import { stageOf, stageTimes } from "./stages.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";

const PORT = 22280;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    mode: { type: "string", default: "close" },
    seconds: { type: "string", default: "10" },
    warmup: { type: "string", default: "8" },
    // V8's sampler interrupts the agent with a signal every 500 µs: its own cost shows in perf's figures.
    "no-inspector": { type: "boolean", default: false },
    // Rows to clickhouse-server (started here) instead of the file sink: the production pipeline's profile.
    clickhouse: { type: "boolean", default: false },
    dir: { type: "string", default: new URL("./out/agent-prof", import.meta.url).pathname },
  },
});
requireRoot("the agent profile (the agent loads BPF programs)");
await Deno.mkdir(values.dir!, { recursive: true });
await using ng = await startNginx({ port: PORT, workers: 1 });
const ch = values.clickhouse ? await startClickHouse() : undefined;

/** A Chrome DevTools Protocol session over the agent's inspector WebSocket. */
async function inspector(port: number) {
  const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as {
    webSocketDebuggerUrl: string;
  }[];
  const ws = new WebSocket(list[0].webSocketDebuggerUrl);
  await new Promise((r, j) => (ws.onopen = r, ws.onerror = j));
  let id = 0;
  const waiting = new Map<number, (v: unknown) => void>();
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.id !== undefined) waiting.get(m.id)?.(m.result);
  };
  const call = (method: string, params: unknown = {}) =>
    new Promise<unknown>((r) => {
      waiting.set(++id, r);
      ws.send(JSON.stringify({ id, method, params }));
    });
  return { call, close: () => ws.close() };
}

const agent = await startAgent({
  metricsPort: 22437,
  // No rotation of the rows file (as bench/capture_overhead.ts): its fsync would be most of the profile.
  config: {
    capture: { ports: [PORT] },
    metrics: { enabled: true },
    output: ch
      ? { file: { path: "" }, clickhouse: { url: ch.url, database: "ja4prof", table: "requests" } }
      : { file: { max_size_mb: 1048576, max_files: 1 } },
  },
  v8Flags: AGENT_V8_FLAGS + ",--perf-basic-prof",
  // The inspector samples only between Profiler.start and stop: after the BPF load (V8's --cpu-prof samples
  // from the start, and its SIGPROF makes the verifier return EAGAIN).
  denoFlags: [...AGENT_DENO_FLAGS, ...(values["no-inspector"] ? [] : ["--inspect=127.0.0.1:9339"])],
  readyTimeoutMs: 90_000,
});
const script = values.mode === "browser" ? await browserScript() : undefined;
const load = (seconds: number) =>
  wrk({
    url: ng.url,
    threads: 1,
    connections: 32,
    duration: seconds,
    headers: values.mode === "close" ? ["Connection: close"] : [],
    script,
  });
if (Number(values.warmup) > 0) await load(Number(values.warmup));
const cdp = values["no-inspector"] ? undefined : await inspector(9339);
await cdp?.call("Profiler.enable");
await cdp?.call("Profiler.setSamplingInterval", { interval: 500 });
await cdp?.call("Profiler.start");
const data = `${values.dir}/perf.data`;
const perf = new Deno.Command("perf", {
  args: [
    "record",
    "-e",
    "cpu-clock",
    "-F",
    "997",
    "-g",
    "-p",
    String(agent.pid),
    "-o",
    data,
    "--",
    "sleep",
    String(Number(values.seconds) + 3),
  ],
  stdout: "null",
  stderr: "null",
}).spawn();
const w = await load(Number(values.seconds));
await perf.status;
const profile = await cdp?.call("Profiler.stop").then((r) =>
  (r as { profile: Parameters<typeof stageTimes>[0] }).profile
);
cdp?.close();
if (profile) await Deno.writeTextFile(`${values.dir}/agent.cpuprofile`, JSON.stringify(profile));
await agent.stop("SIGTERM", 30_000);
await agent.close();
await ch?.close();
const rep = new TextDecoder().decode(
  (await new Deno.Command("perf", {
    args: [
      "report",
      "-i",
      data,
      "--stdio",
      "--no-children",
      "--sort",
      "sym",
      "-g",
      "none",
      "--percent-limit",
      "0",
    ],
    stderr: "null",
  }).output()).stdout,
);
// Lines: "    12.34%  [.] LazyCompile:*push file:///…/src/capture/requests.ts:168" (JS) or a native symbol.
const stages = new Map<string, number>();
let total = 0;
for (const l of rep.split("\n")) {
  const m = /^\s+([\d.]+)%\s+\[(.)\]\s+(.*)$/.exec(l);
  if (!m) continue;
  const pct = Number(m[1]), sym = m[3];
  total += pct;
  // V8's perf map names JS code `JS:*'name file:///…/x.ts:LINE:COL`: the file decides the stage.
  const url = (/(file:\/\/\S+|ext:\S+)/.exec(sym)?.[1] ?? "").replace(/(:\d+)+$/, "");
  let stage = m[2] === "k"
    ? "kernel (syscalls, page faults)"
    : url
    ? stageOf(url, "")
    : "native (V8, GC, runtime, libc)";
  if (stage === "") stage = "runtime (ext:)";
  stages.set(stage, (stages.get(stage) ?? 0) + pct);
}
console.log(`wrk ${w.requests} requests (${values.mode}); ${total.toFixed(1)} % of samples attributed`);
console.log("| stage | share of agent CPU |\n| --- | ---: |");
for (const [k, v] of [...stages].sort((a, b) => b[1] - a[1])) console.log(`| ${k} | ${v.toFixed(1)} % |`);
console.log(rep.split("\n").filter((l) => /^\s+[\d.]+%/.test(l)).slice(0, 40).join("\n"));
// By thread: the JS thread against V8's helpers (GC, compiles) and the runtime's pools (gzip, file I/O).
const byThread = new TextDecoder().decode(
  (await new Deno.Command("perf", {
    args: ["report", "-i", data, "--stdio", "--no-children", "--sort", "comm", "-g", "none"],
    stderr: "null",
  }).output()).stdout,
);
console.log("\nby thread:\n" + byThread.split("\n").filter((l) => /^\s+[\d.]+%/.test(l)).join("\n"));

// The JavaScript side from V8's own sampler (the native part stays opaque: the npm build of Deno is stripped).
if (profile) {
  const times = stageTimes(profile);
  const sum = [...times.values()].reduce((a, b) => a + b, 0);
  console.log(
    `\nV8 profile (${
      (sum / 1e6).toFixed(2)
    } s sampled):\n| stage | µs/request | share |\n| --- | ---: | ---: |`,
  );
  for (const [k, v] of [...times].sort((a, b) => b[1] - a[1])) {
    console.log(`| ${k} | ${(v / w.requests).toFixed(2)} | ${(100 * v / sum).toFixed(1)} % |`);
  }
}
