/**
 * A CPU profile of the running agent under load: nginx (1 worker) + the agent (packaged V8 flags, file sink)
 * + wrk for a while, then the agent stops (SIGTERM) and V8 writes its profile; the stages of bench/stages.ts
 * are printed from it.
 *
 *   deno run -A bench/profile_agent.ts [--mode close|http] [--seconds 10] [--dir bench/out/agent-prof]
 */
import { parseArgs } from "node:util";
import { AGENT_V8_FLAGS, startAgent } from "../tests/helpers/agent.ts";
import { startNginx } from "../tests/helpers/servers.ts";
import { wrk } from "../tests/helpers/clients.ts";
import { requireRoot } from "../tests/helpers/proc.ts";
import { stageTimes } from "./stages.ts";

const PORT = 22280;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    mode: { type: "string", default: "close" },
    seconds: { type: "string", default: "10" },
    dir: { type: "string", default: new URL("./out/agent-prof", import.meta.url).pathname },
  },
});
requireRoot("the agent profile (the agent loads BPF programs)");
await Deno.mkdir(values.dir!, { recursive: true });
for (const e of Deno.readDirSync(values.dir!)) {
  if (e.name.endsWith(".cpuprofile")) Deno.removeSync(`${values.dir}/${e.name}`);
}
await using ng = await startNginx({ port: PORT, workers: 1 });
const agent = await startAgent({
  metricsPort: 22437,
  config: { capture: { ports: [PORT] }, metrics: { enabled: true } },
  v8Flags: AGENT_V8_FLAGS,
  denoFlags: ["--cpu-prof", `--cpu-prof-dir=${values.dir}`],
  readyTimeoutMs: 90_000,
});
const w = await wrk({
  url: ng.url,
  threads: 1,
  connections: 32,
  duration: Number(values.seconds),
  headers: values.mode === "close" ? ["Connection: close"] : [],
});
await new Promise((r) => setTimeout(r, 2500)); // drain: hold_ms and the sink's flush
const exit = await agent.stop("SIGTERM", 30_000);
await agent.close();
console.log(`wrk ${w.requests} requests (${values.mode}); agent exit ${exit.code}`);
const file = [...Deno.readDirSync(values.dir!)].find((e) => e.name.endsWith(".cpuprofile"));
if (!file) throw new Error("the agent wrote no profile");
const times = stageTimes(JSON.parse(await Deno.readTextFile(`${values.dir}/${file.name}`)));
const total = [...times.values()].reduce((a, b) => a + b, 0);
console.log("| stage | µs/request | share |\n| --- | ---: | ---: |");
for (const [k, v] of [...times].sort((a, b) => b[1] - a[1])) {
  console.log(`| ${k} | ${(v / w.requests).toFixed(2)} | ${(100 * v / total).toFixed(1)} % |`);
}
