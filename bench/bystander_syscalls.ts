/**
 * What the agent costs a process it does not follow: a bystander making small system calls (`dd bs=1` from
 * /dev/zero to /dev/null: one read() and one write() per byte) timed with no agent, with this checkout's agent
 * and, with --base, with an earlier checkout's — interleaved per round (off, this, base; then reversed), so all
 * see the same machine. Every syscall tracepoint the agent enables puts every process's system calls on the
 * kernel's slow path, and a program on `sys_exit_read` runs for every read() on the host.
 *
 *   deno run -A bench/bystander_syscalls.ts [--pairs 2000000] [--rounds 4] [--base OTHER_CHECKOUT]
 *
 * nginx (1 worker, with a TLS port) runs meanwhile so that the agent attaches what it would on a web server.
 * Hold the machine lock while it runs.
 */
import { parseArgs } from "node:util";
import { checkoutAgent, startAgent } from "../tests/helpers/agent.ts";
import { startNginx } from "../tests/helpers/servers.ts";
import { requireRoot, requireTool } from "../tests/helpers/proc.ts";
import { median } from "./median.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    pairs: { type: "string", default: "2000000" },
    rounds: { type: "string", default: "4" },
    base: { type: "string" },
  },
});
requireRoot("the bystander benchmark (the agent loads BPF programs)");
const time = requireTool("time", "time");
const pairs = Number(values.pairs);
const base = values.base?.replace(/\/$/, "");

/** ns of CPU (user + system) per read()+write() pair of one dd run. */
function dd(): number {
  const r = new Deno.Command(time, {
    args: ["-f", "%U %S", "dd", "if=/dev/zero", "of=/dev/null", "bs=1", `count=${pairs}`],
    stderr: "piped",
  }).outputSync();
  const [u, s] = new TextDecoder().decode(r.stderr).trim().split("\n").at(-1)!.split(" ").map(Number);
  return (u + s) * 1e9 / pairs;
}

type Variant = "off" | "this" | "base";
const variants: Variant[] = base ? ["off", "this", "base"] : ["off", "this"];
const ns: Record<Variant, number[]> = { off: [], this: [], base: [] };
await using _nginx = await startNginx({ port: 22382, tlsPort: 22384, workers: 1 });
for (let round = 0; round < Number(values.rounds); round++) {
  for (const v of round % 2 ? [...variants].reverse() : variants) {
    if (v === "off") {
      ns.off.push(dd());
      continue;
    }
    const agent = await startAgent({
      metricsPort: 22441,
      ...(v === "base" ? checkoutAgent(base!) : {}),
    });
    try {
      ns[v].push(dd());
    } finally {
      await agent[Symbol.asyncDispose]();
    }
  }
  console.error(
    `round ${round + 1}: ${variants.map((v) => `${v} ${ns[v].at(-1)!.toFixed(0)}`).join(", ")} ns`,
  );
}

const off = median(ns.off);
console.log(`\n${pairs} read()+write() pairs per run, ${values.rounds} rounds (median)`);
console.log("| agent | ns per pair | vs no agent | added ns |");
console.log("| --- | ---: | ---: | ---: |");
for (const v of variants) {
  const m = median(ns[v]);
  console.log(`| ${v} | ${m.toFixed(0)} | ${(m / off).toFixed(3)}× | ${(m - off).toFixed(0)} |`);
}
