/**
 * The agent's per-request path in user space, stage by stage, without the kernel or a network sink:
 * synthetic ring records (bench/traffic.ts) → Agent.onRecord (decode → trackers → HTTP parse → JA4H/JA4T/JA4
 * → correlator input) → correlator tick (rows) → output sink (privacy filter + JSON lines into a discarding
 * writer). Reports CPU ns per request of the JS thread for each stage.
 *
 *   deno run -A bench/hotpath_bench.ts [--requests=200000] [--modes=keepalive,close,tls] [--perfbuf] [--rowbinary]
 *   deno run -A --cpu-prof --cpu-prof-dir=bench/out bench/hotpath_bench.ts --modes=close   # where it goes
 *
 * Modes: keepalive = plain HTTP, 100 requests per connection (one DATA event per request; the heads rotate);
 * repeat = the same, each connection repeating one head (bots, API clients, load generators); close = plain HTTP,
 * one request per connection (DATA carrying the SYN + close per request); tls = one TLS connection per 10
 * requests (tc's ClientHello segment, the raw reads of the handshake — the first carrying the SYN — SSL_read
 * plaintext, close); close-nosyn / close-noclose = close without the SYN (tc missed it) / with the close
 * records lost (what a full ring drops);
 * close-scan = close with every second connection a SYN alone (no records at all); h2 = tls in HTTP/2 (HPACK as
 * a browser sends it); close-unique / keepalive-unique = every connection its own session cookie (no header
 * block repeats across connections). --perfbuf: delivered as per-CPU perf buffers would. --rowbinary: each
 * batch's rows also encoded as the ClickHouse sink encodes them (RowBinaryEncoder, into one reused buffer; no
 * server), in the sink stage.
 */
import { Agent } from "../src/agent/agent.ts";
import type { AttachPlan } from "../src/bpf/plan.ts";
import { DEFAULT_CONFIG } from "../src/config/config.ts";
import { setLogSink } from "../src/log.ts";
import { openOutputs } from "../src/sink/mod.ts";
import { RowBinaryEncoder, stringBytes } from "../src/sink/ch_rowbinary.ts";
import { type RingBatch, ringBatch, Traffic, TRAFFIC_MODES } from "./traffic.ts";

/** CPU ns of the calling (JS) thread. */
function threadNs(): number {
  return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]);
}

export interface HotpathResult {
  mode: string;
  requests: number;
  rows: number;
  nsPerRequest: { onRecord: number; tick: number; sink: number; total: number };
  bytesOut: number;
  /** Process RSS after the mode ran, and VmHWM (peak) so far, MiB. */
  rssMiB: number;
  peakMiB: number;
}

/**
 * `perfbuf`: events as the per-CPU perf buffers deliver them (kernels without ring buffers): not in one order,
 * so rows may wait for facts; each batch stands for one poll of the buffers.
 */
export async function runHotpath(
  mode: string,
  requests: number,
  perfbuf = false,
  rowbinary = false,
): Promise<HotpathResult> {
  setLogSink(() => {});
  const cfg = structuredClone(DEFAULT_CONFIG);
  cfg.output.stdout = true;
  let bytesOut = 0;
  const out = await openOutputs(cfg, { stdout: { writeSync: (p) => (bytesOut += p.length, p.length) } });
  const agent = new Agent(cfg);
  agent.correlator.opts.orderedEvents = !perfbuf; // as start() sets it for the ring buffer
  // Agent.start() would plan real hooks; the dispatch only needs to know which method nginx uses.
  agent.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
  // JA4EBPF_PLAIN_PKT=1: the tc events of the BPF object before plain-HTTP first segments were dropped there.
  const traffic = new Traffic({
    ...TRAFFIC_MODES[mode],
    plainPkt: Deno.env.get("JA4EBPF_PLAIN_PKT") === "1",
  });
  let rows = 0;
  const st = { onRecord: 0, tick: 0, sink: 0 };
  const enc = rowbinary ? new RowBinaryEncoder() : undefined;
  const batchId = stringBytes("0123456789abcdef0123456789abcdef");
  let rb = new Uint8Array(1 << 20);
  let ring: RingBatch | undefined;
  const batch = (n: number, measure: boolean) => {
    const recs: Uint8Array[] = [];
    let got = 0;
    while (got < n) got += traffic.connection(recs);
    ring = ringBatch(recs, ring);
    const { area, view, offs } = ring;
    let t = threadNs();
    for (let i = 0; i < recs.length; i++) agent.onRecordAt(area, view, offs[i], recs[i].length);
    let t2 = threadNs();
    // As the agent's onBatch does (optional: a checkout from before reader rounds, measured side by side).
    if (perfbuf) (agent.correlator as { endOfRound?: () => void }).endOfRound?.();
    if (measure) st.onRecord += t2 - t;
    const rs = agent.correlator.tick(Date.now());
    t = threadNs();
    if (measure) st.tick += t - t2;
    out.write(rs);
    if (enc) {
      let p = 0;
      for (const r of rs) {
        // The bytes are not kept: a full buffer starts over.
        const max = enc.maxBytes(r, batchId);
        if (p + max > rb.length) {
          p = 0;
          if (max > rb.length) rb = new Uint8Array(max);
        }
        p = enc.write(r, "modern", rb, p, batchId);
      }
    }
    t2 = threadNs();
    if (measure) {
      st.sink += t2 - t;
      rows += rs.length;
    }
    return got;
  };
  for (let i = 0; i < 20; i++) batch(1000, false); // JIT warm-up
  await new Promise((r) => setTimeout(r, 10));
  let done = 0;
  while (done < requests) done += batch(2000, true);
  const per = (ns: number) => Math.round(ns / done);
  await out.close();
  return {
    mode,
    requests: done,
    rows,
    nsPerRequest: {
      onRecord: per(st.onRecord),
      tick: per(st.tick),
      sink: per(st.sink),
      total: per(st.onRecord + st.tick + st.sink),
    },
    bytesOut,
    rssMiB: Deno.memoryUsage().rss / 1048576,
    peakMiB: Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1] ?? 0) / 1024,
  };
}

if (import.meta.main) {
  const arg = (k: string, d: string) =>
    Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
  const requests = Number(arg("requests", "200000"));
  const results: HotpathResult[] = [];
  for (const mode of arg("modes", "keepalive,close,tls").split(",")) {
    results.push(
      await runHotpath(mode, requests, Deno.args.includes("--perfbuf"), Deno.args.includes("--rowbinary")),
    );
  }
  console.log(
    "| mode | requests | rows | onRecord ns | tick ns | sink ns | total ns/request | RSS / peak MiB |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of results) {
    const n = r.nsPerRequest;
    console.log(
      `| ${r.mode} | ${r.requests} | ${r.rows} | ${n.onRecord} | ${n.tick} | ${n.sink} | ${n.total} | ${
        r.rssMiB.toFixed(0)
      } / ${r.peakMiB.toFixed(0)} |`,
    );
  }
}
