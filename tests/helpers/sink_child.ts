/**
 * A process that runs the ClickHouse sink and is killed with SIGKILL by a test. Writes rows /r/<tag>/<i> in
 * batches of 100; after each batch is durable in the spool it prints "durable <next i>".
 * Usage: deno run -A sink_child.ts SPOOL_DIR URL TABLE TAG
 */
import { DEFAULT_CONFIG } from "../../src/config/config.ts";
import { ClickHouseSink } from "../../src/sink/clickhouse.ts";
import { testRow } from "./rows.ts";

const [spool_dir, url, table, tag] = Deno.args;
const sink = await ClickHouseSink.open({
  config: {
    ...DEFAULT_CONFIG.output.clickhouse,
    url,
    table,
    spool_dir,
    batch_rows: 300,
    flush_interval_ms: 100,
  },
  retryMinMs: 20,
  retryMaxMs: 200,
});
const enc = new TextEncoder();
for (let i = 0;; i += 100) {
  sink.write(Array.from({ length: 100 }, (_, k) => testRow(i + k, tag)));
  await sink.persist();
  await Deno.stdout.write(enc.encode(`durable ${i + 100}\n`));
  await new Promise((r) => setTimeout(r, 5));
}
