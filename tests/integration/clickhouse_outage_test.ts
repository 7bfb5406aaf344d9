/**
 * ClickHouse stopped under steady load (2,000 rows/s) and restarted: zero rows lost, zero duplicated, the
 * backlog visible soon after the server returns. 10 s outage by default; JA4EBPF_LONG=1 makes it 60 s.
 */
import { assert, assertEquals } from "../../src/testing/asserts.ts";
import { DEFAULT_CONFIG } from "../../src/config/config.ts";
import { ClickHouseSink } from "../../src/sink/clickhouse.ts";
import { setLogSink } from "../../src/log.ts";
import { delay, startClickHouse } from "../helpers/clickhouse.ts";
import { testRow } from "../helpers/rows.ts";

const OUTAGE_MS = Deno.env.get("JA4EBPF_LONG") === "1" ? 60_000 : 10_000;

Deno.test({
  name: `clickhouse outage of ${OUTAGE_MS / 1000} s under 2,000 rows/s: no loss, no duplicate`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const ch = await startClickHouse();
    const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-outage-" });
    const prevLog = setLogSink(() => {});
    try {
      const sink = await ClickHouseSink.open({
        config: {
          ...DEFAULT_CONFIG.output.clickhouse,
          url: ch.url,
          table: "outage",
          spool_dir: spool,
          flush_interval_ms: 250,
          timeout_ms: 5000,
        },
        // Short backoff cap so the test sees the return quickly (the default cap is 30 s).
        retryMinMs: 200,
        retryMaxMs: 1000,
      });
      let written = 0;
      const writer = setInterval(() => {
        sink.write(Array.from({ length: 20 }, (_, k) => testRow(written + k, "o")));
        written += 20;
      }, 10);
      await delay(2000);
      await ch.stop();
      await delay(OUTAGE_MS);
      const during = sink.stats();
      assert(during.spooled > 0, "rows spooled during the outage");
      assert((during.errors.network ?? 0) > 0, "network errors counted");
      await ch.start();
      const back = Date.now();
      await delay(2000);
      clearInterval(writer);
      assert(await sink.drain(30_000), "drained");
      const catchUp = Date.now() - back;
      await sink.close();
      const t = await ch.query("SELECT count(), uniqExact(path) FROM ja4ebpf.outage FORMAT TSV");
      assertEquals(t.trim(), `${written}\t${written}`);
      const s = sink.stats();
      assertEquals([s.emitted, s.shipped, s.spooled, s.buffered, s.quarantined], [written, written, 0, 0, 0]);
      assertEquals(s.dropped, {});
      console.log(
        `outage ${OUTAGE_MS / 1000} s: ${written} rows, peak spool ${during.spooled} rows, ` +
          `all visible ${(catchUp / 1000).toFixed(1)} s after restart`,
      );
    } finally {
      setLogSink(prevLog);
      await ch.close();
      await Deno.remove(spool, { recursive: true }).catch(() => {});
    }
  },
});
