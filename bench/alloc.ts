/**
 * Bytes of V8 heap the agent allocates per request, by mode: the synthetic records of bench/traffic.ts handed
 * to Agent.onRecordAt as the ring reader does, the correlator ticked, rows written to a discarding stdout sink.
 * Measured as heapUsed before/after each batch with a young generation large enough that no scavenge falls
 * inside one (batches that saw one are left out); the median over batches. Allocation is what drives the
 * scavenges and, for what outlives them, the mark-compacts that V8's helper threads run beside the agent.
 *
 *   deno run -A bench/alloc.ts [--modes keepalive,close] [--sites] [--tree OTHER_CHECKOUT]
 *
 * --sites lists where the bytes are allocated (V8's sampling heap profiler, by the innermost three frames of
 * ours). --tree runs another checkout's agent with this file copied into its bench/ (side by side).
 */
import { parseArgs } from "node:util";
import { Session } from "node:inspector";
import { Agent } from "../src/agent/agent.ts";
import type { AttachPlan } from "../src/bpf/plan.ts";
import { DEFAULT_CONFIG } from "../src/config/config.ts";
import { setLogSink } from "../src/log.ts";
import { openOutputs } from "../src/sink/mod.ts";
import { type RingBatch, ringBatch, Traffic, TRAFFIC_MODES } from "./traffic.ts";

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children?: ProfileNode[];
}

function sites(n: ProfileNode, into: Map<string, number>, stack: string[] = []): void {
  const cf = n.callFrame;
  const ours = /\/(src|bench)\//.test(cf.url);
  const here = ours
    ? `${cf.functionName || "(anonymous)"} ${cf.url.replace(/.*\/(src|bench)\//, "$1/")}:${cf.lineNumber + 1}`
    : "";
  const st = here ? [...stack, here] : stack;
  if (n.selfSize) {
    const k = st.slice(-3).reverse().join(" < ") || "(runtime)";
    into.set(k, (into.get(k) ?? 0) + n.selfSize);
  }
  for (const c of n.children ?? []) sites(c, into, st);
}

export async function allocPerRequest(
  mode: string,
  withSites: boolean,
): Promise<{ bytes: number; batches: number; sites?: [string, number][] }> {
  setLogSink(() => {});
  const cfg = structuredClone(DEFAULT_CONFIG);
  cfg.output.stdout = true;
  const out = await openOutputs(cfg, { stdout: { writeSync: (p) => p.length } });
  const agent = new Agent(cfg);
  agent.correlator.opts.orderedEvents = true;
  agent.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
  const traffic = new Traffic(TRAFFIC_MODES[mode]);
  let ring: RingBatch | undefined;
  const session = withSites ? new Session() : undefined;
  session?.connect();
  const post = (m: string, p: object = {}) =>
    new Promise<{ profile?: { head: ProfileNode } }>((res, rej) =>
      session!.post(
        m,
        p,
        (e: Error | null, r: unknown) => e ? rej(e) : res(r as { profile?: { head: ProfileNode } }),
      )
    );
  const per: number[] = [];
  const bySite = new Map<string, number>();
  for (let round = 0; round < 70; round++) {
    const recs: Uint8Array[] = [];
    let got = 0;
    while (got < 1000) got += traffic.connection(recs);
    ring = ringBatch(recs, ring);
    const { area, view, offs } = ring;
    const measure = round >= 20; // after the JIT settled
    if (measure && session) await post("HeapProfiler.startSampling", { samplingInterval: 256 });
    const h0 = Deno.memoryUsage().heapUsed;
    for (let i = 0; i < recs.length; i++) agent.onRecordAt(area, view, offs[i], recs[i].length);
    out.write(agent.correlator.tick(Date.now()));
    const h1 = Deno.memoryUsage().heapUsed;
    if (measure && session) sites((await post("HeapProfiler.stopSampling")).profile!.head, bySite);
    if (measure && h1 >= h0) per.push((h1 - h0) / got);
  }
  await out.close();
  session?.disconnect();
  per.sort((a, b) => a - b);
  return {
    bytes: Math.round(per[per.length >> 1] ?? NaN),
    batches: per.length,
    sites: withSites ? [...bySite].sort((a, b) => b[1] - a[1]) : undefined,
  };
}

/** A young generation no batch fills: heapUsed then only grows inside a batch. */
const V8 = "--min-semi-space-size=64,--max-semi-space-size=64";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      modes: { type: "string", default: "keepalive,close" },
      sites: { type: "boolean", default: false },
      tree: { type: "string" },
    },
  });
  if (Deno.env.get("JA4EBPF_ALLOC_CHILD") !== "1") {
    // Re-run under the V8 flags, from this checkout or (--tree) from the other one with this file copied in.
    let file = new URL(import.meta.url).pathname;
    if (values.tree) {
      const here = new URL(".", import.meta.url).pathname;
      for (const f of ["alloc.ts", "traffic.ts"]) {
        await Deno.copyFile(`${here}${f}`, `${values.tree}/bench/${f}`);
      }
      file = `${values.tree}/bench/alloc.ts`;
    }
    const args = ["run", "-A", `--v8-flags=${V8}`, file, `--modes=${values.modes}`];
    if (values.sites) args.push("--sites");
    const r = await new Deno.Command(Deno.execPath(), { args, env: { JA4EBPF_ALLOC_CHILD: "1" } }).spawn()
      .status;
    Deno.exit(r.code);
  }
  console.log("| mode | bytes allocated per request (median of batches) | batches |\n| --- | ---: | ---: |");
  for (const mode of values.modes!.split(",")) {
    const r = await allocPerRequest(mode, values.sites!);
    console.log(`| ${mode} | ${r.bytes} | ${r.batches} |`);
    if (r.sites) {
      const total = r.sites.reduce((s, [, v]) => s + v, 0);
      for (const [k, v] of r.sites.slice(0, Number(Deno.env.get("SITES_TOP") ?? 15))) {
        console.log(`  ${(100 * v / total).toFixed(1).padStart(5)} %  ${k}`);
      }
    }
  }
}
