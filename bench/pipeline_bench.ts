/**
 * How many rows/s the ClickHouse pipeline (encode → JSON → gzip → spool → insert into a real clickhouse-server)
 * sustains, and the RSS at that rate. Goal: ≥ 100k rows/s on one core.
 *   deno bench -A bench/pipeline_bench.ts      (encode and gzip micro-benchmarks + one end-to-end run)
 *   deno run -A bench/pipeline_bench.ts [ROWS] (end-to-end only, prints figures)
 */
import { DEFAULT_CONFIG } from "../src/config/config.ts";
import { encodeRow } from "../src/sink/ch_schema.ts";
import { ClickHouseSink, gzip } from "../src/sink/clickhouse.ts";
import { setLogSink } from "../src/log.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";
import { testRow } from "../tests/helpers/rows.ts";

const GOAL = 100_000;
const sample = Array.from({ length: 10_000 }, (_, i) => testRow(i, "bench"));

export async function endToEnd(total: number): Promise<string> {
  const ch = await startClickHouse();
  const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-bench-" });
  const prev = setLogSink(() => {});
  try {
    const sink = await ClickHouseSink.open({
      config: {
        ...DEFAULT_CONFIG.output.clickhouse,
        url: ch.url,
        table: "bench",
        spool_dir: spool,
        batch_rows: 50_000,
      },
    });
    // Warm up (JIT, table creation) outside the measurement.
    sink.write(sample.slice(0, 2000));
    await sink.drain(30_000);
    const rss0 = Deno.memoryUsage().rss;
    let rssMax = rss0;
    const t0 = performance.now();
    for (let i = 0; i < total; i += 10_000) {
      // Fresh timestamps per block: identical rows would be identical batches.
      sink.write(sample.map((r, k) => ({ ...r, pid: i + k })));
      if (i % 50_000 === 0) await sink.persist();
      rssMax = Math.max(rssMax, Deno.memoryUsage().rss);
    }
    const ok = await sink.drain(120_000);
    const secs = (performance.now() - t0) / 1000;
    rssMax = Math.max(rssMax, Deno.memoryUsage().rss);
    await sink.close();
    const landed = Number((await ch.query("SELECT count() FROM ja4ebpf.bench")).trim()) - 2000;
    const rate = landed / secs;
    return [
      `end-to-end: ${landed} rows in ${secs.toFixed(2)} s = ${Math.round(rate)} rows/s ` +
      `(${(rate / GOAL).toFixed(2)}× the ${GOAL / 1000}k goal)${ok ? "" : " [drain timed out]"}`,
      `RSS: ${(rss0 / 2 ** 20).toFixed(0)} MiB before, ${(rssMax / 2 ** 20).toFixed(0)} MiB peak`,
      `spool: ${sink.stats().shipped} shipped, ${sink.stats().spooled} left`,
    ].join("\n");
  } finally {
    setLogSink(prev);
    await ch.close();
    await Deno.remove(spool, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const n = Number(Deno.args[0] ?? 500_000);
  const t0 = performance.now();
  const lines = sample.map((r) => JSON.stringify(encodeRow(r, "legacy")));
  const enc = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  await gzip(lines.join("\n"));
  const gz = (performance.now() - t1) / 1000;
  console.log(`encode (cold): ${Math.round(10_000 / enc)} rows/s; gzip: ${Math.round(10_000 / gz)} rows/s`);
  console.log(await endToEnd(n));
} else {
  Deno.bench("encode 10k rows (JSONEachRow, legacy)", { group: "cpu" }, () => {
    for (const r of sample) JSON.stringify(encodeRow(r, "legacy"));
  });
  const body = sample.map((r) => JSON.stringify(encodeRow(r, "legacy"))).join("\n");
  Deno.bench("gzip 10k encoded rows", { group: "cpu" }, async () => {
    await gzip(body);
  });
  Deno.bench("end-to-end 300k rows into clickhouse-server", { n: 1, warmup: 0 }, async () => {
    console.log(await endToEnd(300_000));
  });
}
