/**
 * Memory soak: the agent (packaged V8 flags, production defaults, file sink) watches nginx while wrk opens one
 * connection per request (`Connection: close`) for a long time; the agent's RSS is sampled every second.
 * The claim checked: RSS stays under the budget and does not grow after the first minute.
 *
 *   deno run -A bench/soak.ts [--minutes 20] [--budget-mib 100] [--connections 32] [--clickhouse] [--json FILE]
 *                             [--base DIR] [--shared-runtime] [--browser] [--v8-flags F,F] [--agent-stdout FILE]
 *
 * The agent runs on a copy of the runtime, as installed (its own executable); --shared-runtime runs it on this
 * process's. --base DIR: another checkout's agent (its src/main.ts) instead of this one's. --browser: each
 * request a browser's header lines with its own session cookie and referer (tests/helpers/clients.ts
 * browserScript), as new visitors send them, instead of wrk's one short head. --v8-flags: added to the shipped
 * ones (e.g. --trace-gc-nvp, whose lines go to --agent-stdout's file; bench/gc_trace.ts sums them).
 * --clickhouse: rows to clickhouse-server (started here) as in production — RowBinary, gzip, the disk spool —
 * instead of the file sink; rows are then also counted in ClickHouse.
 *
 * Reports connections served (distinct client ports × reuse), rows, RSS at 1 min / max / last, and the slope of
 * a least-squares line through the samples after the first minute (MiB per minute); the V8 heap in use (the
 * agent's /metrics, every 5 s) beside it, so a growth shows whether it is the JS heap. 20 minutes by default:
 * V8 sizes its old generation's next collection from the last ones, and a heap left to grow until the next
 * one (garbage, not a leak, but RSS all the same) showed only after 7 minutes (docs/performance.md).
 */
import { parseArgs } from "node:util";
import { AGENT_DENO_FLAGS, AGENT_V8_FLAGS, startAgent } from "../tests/helpers/agent.ts";
import { startNginx } from "../tests/helpers/servers.ts";
import { browserScript, wrk } from "../tests/helpers/clients.ts";
import { delay, makeTempDir, requireRoot } from "../tests/helpers/proc.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";

const HTTP_PORT = 22180;
const METRICS_PORT = 22436;

/**
 * RSS and its parts, kB: anonymous (the JS heap, malloc), file (the executable and libraries) and shared
 * memory (the BPF ring buffer's pages, mapped by the agent — its data area twice — but owned by the kernel).
 */
function rssKb(pid: number): { rss: number; anon: number; file: number; shmem: number } {
  try {
    const st = Deno.readTextFileSync(`/proc/${pid}/status`);
    const f = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(st)?.[1] ?? 0);
    return { rss: f("VmRSS"), anon: f("RssAnon"), file: f("RssFile"), shmem: f("RssShmem") };
  } catch {
    return { rss: 0, anon: 0, file: 0, shmem: 0 };
  }
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      minutes: { type: "string", default: "20" },
      "budget-mib": { type: "string", default: "100" },
      connections: { type: "string", default: "32" },
      json: { type: "string" },
      clickhouse: { type: "boolean", default: false },
      "shared-runtime": { type: "boolean", default: false },
      base: { type: "string" },
      browser: { type: "boolean", default: false },
      "v8-flags": { type: "string", default: "" },
      "agent-stdout": { type: "string" },
    },
  });
  requireRoot("the soak (the agent loads BPF programs)");
  const v8Flags = AGENT_V8_FLAGS + (values["v8-flags"] ? "," + values["v8-flags"] : "");
  const minutes = Number(values.minutes), budget = Number(values["budget-mib"]);
  await using ng = await startNginx({ port: HTTP_PORT, workers: 1 });
  const ch = values.clickhouse ? await startClickHouse() : undefined;
  const spool = ch ? await makeTempDir("ja4ebpf-soak-spool-") : "";
  // The agent on a runtime of its own, as installed: pages of an executable that another process maps too
  // (this benchmark's runtime) count in the agent's RSS and cannot be returned to the page cache.
  const runtimeDir = values["shared-runtime"] ? "" : await makeTempDir("ja4ebpf-soak-runtime-");
  if (runtimeDir) {
    await Deno.copyFile(Deno.execPath(), `${runtimeDir}/deno`);
    await Deno.chmod(`${runtimeDir}/deno`, 0o755);
  }
  try {
    return await soak();
  } finally {
    await ch?.close();
    if (spool) await Deno.remove(spool, { recursive: true }).catch(() => {});
    if (runtimeDir) await Deno.remove(runtimeDir, { recursive: true }).catch(() => {});
  }

  async function soak(): Promise<number> {
    await using agent = await startAgent({
      metricsPort: METRICS_PORT,
      config: {
        capture: { ports: [HTTP_PORT] },
        output: ch
          ? {
            file: { path: "" },
            clickhouse: { url: ch.url, database: "soak", table: "requests", spool_dir: spool },
          }
          : { file: { max_size_mb: 64, max_files: 2 }, clickhouse: { spool_dir: "" } },
        metrics: { enabled: true },
      },
      readyTimeoutMs: 90_000,
      v8Flags,
      stdoutPath: values["agent-stdout"],
      runtime: runtimeDir ? `${runtimeDir}/deno` : undefined,
      main: values.base ? `${values.base}/src/main.ts` : undefined,
    });
    const samples: { t: number; rssMiB: number; anonMiB: number; fileMiB: number; shmemMiB: number }[] = [];
    const t0 = performance.now();
    const sampler = setInterval(() => {
      const r = rssKb(agent.pid);
      samples.push({
        t: (performance.now() - t0) / 60_000,
        rssMiB: r.rss / 1024,
        anonMiB: r.anon / 1024,
        fileMiB: r.file / 1024,
        shmemMiB: r.shmem / 1024,
      });
    }, 1000);
    // The V8 heap in use, from the agent's own gauge (a scrape every 5 s: cheap beside the load).
    const heap: { t: number; usedMiB: number }[] = [];
    const heapSampler = setInterval(() => {
      agent.metrics().then((m) => {
        const used = m.get("ja4ebpf_heap_used_bytes");
        if (used !== undefined) heap.push({ t: (performance.now() - t0) / 60_000, usedMiB: used / 1048576 });
      }, () => {/* a scrape that failed is a missing sample */});
    }, 5000);
    // wrk in one-minute slices so a long soak reports progress (and a failed slice shows at once).
    let requests = 0;
    for (let m = 0; m < minutes; m++) {
      const w = await wrk({
        url: ng.url,
        threads: 1,
        connections: Number(values.connections),
        duration: 60,
        headers: ["Connection: close"],
        script: values.browser ? await browserScript() : undefined,
      });
      requests += w.requests;
      const last = samples.at(-1)?.rssMiB ?? 0;
      console.error(
        `minute ${m + 1}: ${w.requests} connections (${requests} in all), agent RSS ${last.toFixed(1)} MiB`,
      );
    }
    await delay(3000);
    clearInterval(sampler);
    clearInterval(heapSampler);
    const metrics = await agent.metrics();
    const rows = [...metrics].filter(([k]) => k.startsWith("ja4ebpf_rows_captured_total")).reduce(
      (s, [, v]) => s + v,
      0,
    );
    // With ClickHouse: what landed there once the agent stopped (its stop flushes the spool).
    let rowsInClickHouse: number | undefined;
    if (ch) {
      await agent.stop("SIGTERM", 30_000);
      rowsInClickHouse = Number((await ch.query("SELECT count() FROM soak.requests")).trim());
    }
    const after = samples.filter((s) => s.t >= 1);
    const heapAfter = heap.filter((s) => s.t >= 1);
    const result = {
      minutes,
      connections: requests,
      rows,
      ...(ch ? { sink: "clickhouse", rowsInClickHouse } : { sink: "file" }),
      rssAt1MinMiB: after[0]?.rssMiB ?? NaN,
      rssMaxAfter1MinMiB: Math.max(...after.map((s) => s.rssMiB)),
      rssLastMiB: samples.at(-1)?.rssMiB ?? NaN,
      rssMaxMiB: Math.max(...samples.map((s) => s.rssMiB)),
      anonMaxMiB: Math.max(...samples.map((s) => s.anonMiB)),
      fileMaxMiB: Math.max(...samples.map((s) => s.fileMiB)),
      shmemMaxMiB: Math.max(...samples.map((s) => s.shmemMiB)),
      anonSlopeMiBPerMin: slope(after.map((s) => s.t), after.map((s) => s.anonMiB)),
      slopeMiBPerMin: slope(after.map((s) => s.t), after.map((s) => s.rssMiB)),
      heapUsedMaxAfter1MinMiB: Math.max(...heapAfter.map((s) => s.usedMiB)),
      heapUsedSlopeMiBPerMin: slope(heapAfter.map((s) => s.t), heapAfter.map((s) => s.usedMiB)),
      /** Full collections the agent forced (src/agent/heap.ts; 0 when its V8 flags do not expose gc). */
      heapCollections: metrics.get("ja4ebpf_heap_collections_total") ?? 0,
      budgetMiB: budget,
      v8Flags,
      denoFlags: AGENT_DENO_FLAGS.join(" "),
      samples: samples.length,
    };
    console.log(JSON.stringify(result, null, 1));
    if (values.json) {
      await Deno.writeTextFile(values.json, JSON.stringify({ ...result, series: samples, heap }));
    }
    return result.rssMaxMiB <= budget ? 0 : 1;
  }
}

if (import.meta.main) Deno.exit(await main());
