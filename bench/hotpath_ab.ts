/**
 * The hot-path benchmark (bench/hotpath_bench.ts) of this checkout (A) and of another checkout (B), run
 * interleaved (A B A B …, one fresh process each) so both see the same machine load, then the medians per mode
 * and their ratio A/B (< 1: this checkout is faster).
 *
 *   deno run -A bench/hotpath_ab.ts OTHER_CHECKOUT [--rounds=5] [--requests=200000] [--modes=keepalive,close,tls]
 *
 * Each checkout runs its own bench/hotpath_bench.ts (the bench drives the agent through its public members,
 * which may differ between versions). Hold the machine lock while it runs.
 */
import { parseArgs } from "node:util";
import { median } from "./median.ts";
import { checkoutAgent } from "../tests/helpers/agent.ts";

const here = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rounds: { type: "string", default: "5" },
    requests: { type: "string", default: "200000" },
    modes: { type: "string", default: "keepalive,close,tls" },
  },
});
const other = positionals[0]?.replace(/\/$/, "");
if (!other) {
  console.error(
    "usage: deno run -A bench/hotpath_ab.ts OTHER_CHECKOUT [--rounds=N] [--requests=N] [--modes=…]",
  );
  Deno.exit(2);
}
const modes = values.modes!.split(",");
const COLUMNS = ["onRecord", "tick", "sink", "total"] as const;
type Stage = typeof COLUMNS[number];

/**
 * One run of a checkout's hot-path bench: ns/request per mode and stage. With the V8 and `deno run` flags
 * that checkout packages its agent with (heap limits decide how often V8 collects, so a run with V8's
 * defaults measures another program).
 */
async function runOnce(tree: string): Promise<Map<string, Record<Stage, number>>> {
  const { v8Flags, denoFlags } = checkoutAgent(tree); // none for a checkout from before the files: as it ran
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      ...denoFlags,
      ...(v8Flags ? [`--v8-flags=${v8Flags}`] : []),
      `${tree}/bench/hotpath_bench.ts`,
      `--modes=${values.modes}`,
      `--requests=${values.requests}`,
    ],
    cwd: tree,
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`${tree}: hotpath_bench failed:\n${text}`);
  const res = new Map<string, Record<Stage, number>>();
  for (const mode of modes) {
    // | mode | requests | rows | onRecord ns | tick ns | sink ns | total ns/request | RSS / peak MiB |
    const row = text.split("\n").find((l) => l.startsWith(`| ${mode} |`));
    if (!row) throw new Error(`${tree}: no result for ${mode}:\n${text}`);
    const f = row.split("|").map((s) => s.trim());
    res.set(mode, { onRecord: Number(f[4]), tick: Number(f[5]), sink: Number(f[6]), total: Number(f[7]) });
  }
  return res;
}

const runs: Record<"a" | "b", Map<string, Record<Stage, number>>[]> = { a: [], b: [] };
const rounds = Number(values.rounds);
for (let i = 0; i < rounds; i++) {
  // Alternate which goes first, so neither always runs on a machine just warmed (or loaded) by the other.
  const order = i % 2 ? (["b", "a"] as const) : (["a", "b"] as const);
  for (const side of order) runs[side].push(await runOnce(side === "a" ? here : other));
  const last = (side: "a" | "b") => modes.map((m) => runs[side].at(-1)!.get(m)!.total).join("/");
  console.error(`round ${i + 1}/${rounds}: A ${last("a")}  B ${last("b")} ns/request (${modes.join("/")})`);
}

console.log(`A = ${here}\nB = ${other}\n${rounds} rounds interleaved, ${values.requests} requests per mode`);
console.log("\n| mode | stage | A ns/request (median) | B ns/request (median) | A/B |");
console.log("| --- | --- | ---: | ---: | ---: |");
for (const mode of modes) {
  for (const c of COLUMNS) {
    const a = median(runs.a.map((r) => r.get(mode)![c]));
    const b = median(runs.b.map((r) => r.get(mode)![c]));
    console.log(`| ${mode} | ${c} | ${a} | ${b} | ${b ? (a / b).toFixed(3) : "—"} |`);
  }
}
// The ratio of each round's pair (same moment on the machine), to show the spread.
console.log("\n| mode | A/B total per round | median |\n| --- | --- | ---: |");
for (const mode of modes) {
  const ratios = runs.a.map((r, i) => r.get(mode)!.total / runs.b[i].get(mode)!.total);
  console.log(`| ${mode} | ${ratios.map((x) => x.toFixed(3)).join(" ")} | ${median(ratios).toFixed(3)} |`);
}
