import { DEFAULT_CONFIG } from "./src/config/config.ts";
import { ClickHouseSink } from "./src/sink/clickhouse.ts";
import { setLogSink } from "./src/log.ts";
import { testRow } from "./tests/helpers/rows.ts";
setLogSink(() => {});
const sample = Array.from({ length: 10_000 }, (_, i) => testRow(i, "bench"));
const dir = await Deno.makeTempDir();
const sink = await ClickHouseSink.open({ config: { ...DEFAULT_CONFIG.output.clickhouse, url: "http://127.0.0.1:1", table: "b", spool_dir: dir, batch_rows: 50000, spool_max_mb: 4000 } });
for (let round = 0; round < 2; round++) {
let tw = 0, tp = 0;
for (let i = 0; i < 300000; i += 10000) {
  const blk = sample.map((r, k) => ({ ...r, pid: i + k }));
  const a = performance.now(); sink.write(blk); tw += performance.now() - a;
  const b = performance.now(); await sink.persist(); tp += performance.now() - b;
}
console.log(`write ${Math.round(300000/(tw/1000))} rows/s, persist ${Math.round(300000/(tp/1000))} rows/s, total ${Math.round(300000/((tw+tp)/1000))}, rss ${Math.round(Deno.memoryUsage().rss/2**20)} MiB`);
}
await sink.abandon(); await Deno.remove(dir, {recursive: true});
