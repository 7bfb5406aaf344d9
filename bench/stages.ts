/**
 * Where each microsecond of a request goes in user space: runs bench/hotpath_bench.ts under V8's CPU profiler
 * and splits the measured ns/request by stage, from the profile's self time per function (the source file says
 * which stage a function belongs to). The benchmark's own record generator is left out; garbage collection is
 * its own line (V8 does not say which stage's garbage it collects).
 *
 *   deno run -A bench/stages.ts [--modes keepalive,close] [--requests 300000] [--tree DIR] [--plain-pkt]
 *
 * --tree runs another checkout's agent code with this checkout's benchmark files (copied into DIR/bench/), so
 * an earlier version is measured the same way; --plain-pkt feeds the tc events that version's BPF object sent.
 */
import { parseArgs } from "node:util";

/** Stage of a profile node, by source file (and function for the shared agent file). */
const STAGES: [RegExp, string][] = [
  [/bench\/(traffic|hotpath_bench|stages)\.ts$/, "(benchmark)"],
  [/bpf\/(events|ringbuf)\.ts$/, "event decode"],
  [/capture\/(requests|assembler|lru|packets)\.ts$/, "stream tracking"],
  [/parse\/(http1|http2|hpack|huffman|errors)\.ts$/, "HTTP parse"],
  [/parse\/(tls|tcp_options)\.ts$/, "TLS / TCP option parse"],
  [/fingerprint\//, "fingerprints"],
  [/correlate\//, "correlation"],
  [/sink\/(row|ch_schema)\.ts$/, "row encoding"],
  [/sink\//, "sink write (privacy filter, UTF-8, write)"],
  [/metrics\//, "metrics"],
  [/agent\/agent\.ts$/, "dispatch"],
];

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
}

export function stageOf(url: string, fn: string): string {
  if (fn === "(garbage collector)") return "garbage collection";
  if (fn === "(idle)" || fn === "(program)" || fn === "(root)") return "(other)";
  for (const [re, name] of STAGES) if (re.test(url)) return name;
  // Runtime code and native ops (TextDecoder, TextEncoder, Map internals) count for their nearest caller of
  // ours: decoding a head is HTTP parsing, encoding a batch is the sink's.
  return url === "" || url.startsWith("ext:") || url.startsWith("node:") ? "" : "(other)";
}

/** Self time per stage; a node without a stage of its own (a native op) counts for its nearest staged caller. */
export function stageTimes(p: CpuProfile): Map<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const memo = new Map<number, string>();
  const stage = (id: number): string => {
    let s = memo.get(id);
    if (s !== undefined) return s;
    const n = byId.get(id)!;
    s = stageOf(n.callFrame.url, n.callFrame.functionName);
    if (s === "") s = parent.has(id) ? stage(parent.get(id)!) : "(other)";
    memo.set(id, s);
    return s;
  };
  const out = new Map<string, number>();
  p.samples.forEach((id, i) => out.set(stage(id), (out.get(stage(id)) ?? 0) + p.timeDeltas[i]));
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      modes: { type: "string", default: "keepalive,close" },
      requests: { type: "string", default: "300000" },
      tree: { type: "string" },
      "plain-pkt": { type: "boolean", default: false },
    },
  });
  const here = new URL("..", import.meta.url).pathname;
  const tree = values.tree ?? here;
  if (values.tree) {
    for (const f of ["hotpath_bench.ts", "traffic.ts"]) {
      await Deno.copyFile(`${here}bench/${f}`, `${tree}/bench/${f}`);
    }
  }
  for (const mode of values.modes!.split(",")) {
    const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-prof-" });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--cpu-prof",
        `--cpu-prof-dir=${dir}`,
        `${tree}/bench/hotpath_bench.ts`,
        `--modes=${mode}`,
        `--requests=${values.requests}`,
      ],
      env: values["plain-pkt"] ? { JA4EBPF_PLAIN_PKT: "1" } : {},
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    const row = text.split("\n").find((l) => l.startsWith(`| ${mode} |`));
    if (!row) throw new Error(`no result for ${mode}: ${text}`);
    const total = Number(row.split("|")[7]);
    const file = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".cpuprofile"))!;
    const times = stageTimes(JSON.parse(await Deno.readTextFile(`${dir}/${file.name}`)));
    await Deno.remove(dir, { recursive: true });
    // The measured total covers the agent's work between the benchmark's clock reads: scale the profile's
    // agent-side stages (all but the benchmark and idle) to it.
    const agentSide = [...times].filter(([k]) => k !== "(benchmark)" && k !== "(other)");
    const sum = agentSide.reduce((s, [, v]) => s + v, 0);
    console.log(`\n${mode} (${tree === here ? "this checkout" : tree}): ${total} ns/request in all`);
    console.log("| stage | ns/request | share |\n| --- | ---: | ---: |");
    for (const [k, v] of agentSide.sort((a, b) => b[1] - a[1])) {
      console.log(`| ${k} | ${Math.round(total * v / sum)} | ${(100 * v / sum).toFixed(1)} % |`);
    }
  }
}

if (import.meta.main) await main();
