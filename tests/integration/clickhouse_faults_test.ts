/**
 * ClickHouse sink faults against a real clickhouse-server (Debian's 18.16), with a fault-injecting HTTP proxy
 * in front of it for what the server cannot show (an answer lost after the commit, a proxy's 5xx or 413, a
 * hang, a connection cut mid-body). Each step names the fault; the metrics step reads every documented
 * metric move under the fault it names.
 */
import { assert, assertEquals, assertGreater, assertStringIncludes } from "../../src/testing/asserts.ts";
import { type ClickHouseConfig, DEFAULT_CONFIG, Secret } from "../../src/config/config.ts";
import { ClickHouseSink, gunzipBytes } from "../../src/sink/clickhouse.ts";
import { columns, ddl, encodeLineOpen, parseVersion } from "../../src/sink/ch_schema.ts";
import { decodeRowBinary } from "../../src/sink/ch_rowbinary.ts";
import { setLogSink } from "../../src/log.ts";
import { AgentMetrics } from "../../src/metrics/agent.ts";
import { identityFromScrape } from "../../src/metrics/ledger.ts";
import { parsePrometheusText } from "../../src/metrics/registry.ts";
import { type ClickHouseServer, delay, startClickHouse } from "../helpers/clickhouse.ts";
import {
  type FaultAction,
  type FaultProxy,
  isInsert,
  isReadBack,
  startFaultProxy,
} from "../helpers/fault_proxy.ts";
import { testRow } from "../helpers/rows.ts";

/** JA4EBPF_FAULT_STEPS=<regex>: run only the matching steps (to watch one fault, e.g. against an older build). */
const ONLY = Deno.env.get("JA4EBPF_FAULT_STEPS");
const step = (t: Deno.TestContext, name: string, fn: () => Promise<void>) =>
  t.step({ name, ignore: !!ONLY && !new RegExp(ONLY).test(name), fn });

const NARROW = { name: "narrow", password: "narrow-pw", settings: { max_rows_to_read: 100000 } };

function cfg(url: string, spool_dir: string, o: Partial<ClickHouseConfig>): ClickHouseConfig {
  return {
    ...DEFAULT_CONFIG.output.clickhouse,
    url,
    spool_dir,
    flush_interval_ms: 100,
    timeout_ms: 5000,
    ...o,
  };
}

async function counts(ch: ClickHouseServer, table: string): Promise<{ n: number; uniq: number }> {
  const t = await ch.query(`SELECT count(), uniqExact(path) FROM ja4ebpf.${table} FORMAT TSV`);
  const [n, uniq] = t.trim().split("\t").map(Number);
  return { n, uniq };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

/** A URL nothing listens on. */
function deadUrl(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  return url;
}

/** Leaves `n` rows (tag) in the spool at `dir` as an earlier process would: written, never acknowledged. */
async function leaveSpool(dir: string, table: string, tag: string, batches: number[]): Promise<void> {
  const a = await ClickHouseSink.open({ config: cfg(deadUrl(), dir, { table }), retryMinMs: 50 });
  let i = 0;
  for (const n of batches) {
    a.write(Array.from({ length: n }, (_, k) => testRow(i + k, tag)));
    i += n;
    await a.persist();
  }
  await a.abandon();
}

function spoolFiles(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".rowbinary.gz")).sort();
}

/** CREATE TABLE for the 18.x schema, without the named columns. */
async function tableWithout(ch: ClickHouseServer, table: string, without: string[], partition: string) {
  const cols = columns("legacy").filter(([n]) => !without.includes(n)).map(([n, t]) => `${n} ${t}`);
  await ch.query("CREATE DATABASE IF NOT EXISTS ja4ebpf");
  await ch.query(
    `CREATE TABLE ja4ebpf.${table} (${
      cols.join(", ")
    }) ENGINE = MergeTree PARTITION BY ${partition} ORDER BY (server, ts)`,
  );
}

Deno.test({
  name: "clickhouse sink faults",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const ch = await startClickHouse({ users: [NARROW] });
    const tmp = await Deno.makeTempDir({ prefix: "ja4ebpf-faults-" });
    const logs: string[] = [];
    const prevLog = setLogSink((l) => logs.push(l));
    const proxies: FaultProxy[] = [];
    const proxy = () => {
      const p = startFaultProxy(ch.url);
      proxies.push(p);
      return p;
    };
    try {
      await step(
        t,
        "a table without batch_id is refused with a clear error; ships once it is added",
        async () => {
          await tableWithout(ch, "nobid", ["batch_id"], "date");
          const dir = `${tmp}/nobid`;
          await leaveSpool(dir, "nobid", "nobid", [20]);
          const s = await ClickHouseSink.open({
            config: cfg(ch.url, dir, { table: "nobid", create: false }),
            retryMinMs: 50,
            retryMaxMs: 200,
          });
          assert(
            await until(() => s.stats().alarm === "config", 5000),
            `alarm: ${JSON.stringify(s.stats())}`,
          );
          const msg = logs.find((l) => l.includes("has no batch_id column")) ?? "";
          assertStringIncludes(msg, "ALTER TABLE ja4ebpf.nobid ADD COLUMN batch_id String");
          assertEquals((await counts(ch, "nobid")).n, 0, "nothing shipped into it");
          await ch.query("ALTER TABLE ja4ebpf.nobid ADD COLUMN batch_id String");
          assert(await s.drain(10_000), "drained after the ALTER");
          await s.close();
          assertEquals(await counts(ch, "nobid"), { n: 20, uniq: 20 });
          assertEquals([s.stats().shipped, s.stats().alarm], [20, ""]);
        },
      );

      await step(t, "an 18.x table without date: the read-back filters on toDate(ts)", async () => {
        await tableWithout(ch, "nodate", ["date"], "toDate(ts)");
        const dir = `${tmp}/nodate`;
        await leaveSpool(dir, "nodate", "nodate", [15]);
        const s = await ClickHouseSink.open({
          config: cfg(ch.url, dir, { table: "nodate", create: false }),
          retryMinMs: 50,
          retryMaxMs: 200,
        });
        assert(await s.drain(10_000), "drained");
        await s.close();
        assertEquals(await counts(ch, "nodate"), { n: 15, uniq: 15 });
      });

      await step(t, "an unreadable spooled batch goes to dead/, counted; the queue moves on", async () => {
        const dir = `${tmp}/unreadable`;
        await leaveSpool(dir, "unreadable", "unr", [10, 10]);
        const p = proxy();
        const gate = Promise.withResolvers<void>();
        p.rules.push({
          match: (r) => r.sql.startsWith("SELECT version()"),
          action: { kind: "gate", until: gate.promise },
        });
        const s = await ClickHouseSink.open({
          config: cfg(p.url, dir, { table: "unreadable" }),
          retryMinMs: 50,
          retryMaxMs: 200,
        });
        // After the sink listed it, the first batch's file becomes unreadable (a directory in its place).
        const first = `${dir}/${spoolFiles(dir)[0]}`;
        await Deno.remove(first);
        await Deno.mkdir(first);
        gate.resolve();
        assert(await s.drain(10_000), "drained");
        await s.close();
        const st = s.stats();
        assertEquals([st.quarantined, st.shipped, st.errors.unreadable], [10, 10, 1]);
        assertEquals(await counts(ch, "unreadable"), { n: 10, uniq: 10 });
        assert(Deno.readTextFileSync(`${first.replace(dir, `${dir}/dead`)}.reason`).includes("unreadable"));
      });

      await step(t, "an uncaught error stops the agent cleanly and exits 1", async () => {
        const fatalUrl = new URL("../../src/agent/fatal.ts", import.meta.url).href;
        for (
          const fault of [
            "setTimeout(() => { throw new Error('boom'); }, 10);",
            "Promise.reject(new Error('boom'));",
          ]
        ) {
          const child = `${tmp}/fatal.ts`;
          await Deno.writeTextFile(
            child,
            `import { installFatalHandler } from ${JSON.stringify(fatalUrl)};
installFatalHandler(async () => { await new Promise((r) => setTimeout(r, 50)); console.log("stopped"); });
${fault}
setTimeout(() => console.log("still running"), 5000);
`,
          );
          const out = await new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", "--config", new URL("../../deno.json", import.meta.url).pathname, child],
            stderr: "piped",
          })
            .output();
          const text = new TextDecoder().decode(out.stdout);
          assertEquals([out.code, text], [1, "stopped\n"], new TextDecoder().decode(out.stderr).slice(-1000));
        }
      });

      await step(
        t,
        "ALTER … DROP COLUMN while shipping: DESCRIBE again, retry once, nothing quarantined",
        async () => {
          const s = await ClickHouseSink.open({
            config: cfg(ch.url, `${tmp}/alter`, { table: "alter" }),
            retryMinMs: 50,
          });
          s.write(Array.from({ length: 10 }, (_, i) => testRow(i, "alter")));
          assert(await s.drain(10_000), "first batch");
          await ch.query("ALTER TABLE ja4ebpf.alter DROP COLUMN user_agent");
          for (let b = 1; b <= 3; b++) {
            s.write(Array.from({ length: 10 }, (_, i) => testRow(b * 10 + i, "alter")));
            await s.persist();
          }
          assert(await s.drain(10_000), "drained");
          await s.close();
          const st = s.stats();
          assertEquals([st.shipped, st.quarantined, st.errors.data], [40, 0, 1]);
          assertEquals(await counts(ch, "alter"), { n: 40, uniq: 40 });
          assertEquals(s.server()?.missingColumns, ["user_agent"]);
        },
      );

      await step(
        t,
        "dead/ is capped: a poison batch past the cap is deleted and counted (dead_full)",
        async () => {
          const dir = `${tmp}/deadcap`;
          const cap = 2500;
          const s = await ClickHouseSink.open({
            config: cfg(ch.url, dir, { table: "deadcap" }),
            transform: (o) => ({ ...o, pid: "not-a-number" }),
            retryMinMs: 50,
            deadMaxBytes: cap,
          });
          for (let b = 0; b < 6; b++) {
            s.write(Array.from({ length: 10 }, (_, i) => testRow(b * 10 + i, "deadcap")));
            await s.persist();
          }
          assert(await s.drain(15_000), "drained");
          await s.close();
          const st = s.stats();
          assertGreater(st.quarantined, 0);
          assertGreater(st.dropped.dead_full ?? 0, 0);
          assertEquals(st.quarantined + st.dropped.dead_full, 60);
          const size = [...Deno.readDirSync(`${dir}/dead`)].reduce(
            (a, e) => a + Deno.statSync(`${dir}/dead/${e.name}`).size,
            0,
          );
          assert(size <= cap, `dead/ holds ${size} bytes, cap ${cap}`);
        },
      );

      await step(t, "backoff follows its schedule: new batches do not cut it short", async () => {
        const s = await ClickHouseSink.open({
          config: cfg(deadUrl(), `${tmp}/backoff`, { table: "backoff", flush_interval_ms: 50 }),
          retryMinMs: 1000,
        });
        const w = setInterval(() => s.write(Array.from({ length: 5 }, (_, i) => testRow(i, "bo"))), 50);
        await delay(3500);
        clearInterval(w);
        const st = s.stats();
        await s.abandon();
        // 1 s → 2 s → 4 s with jitter (each wait between half and all of it): at most 3 attempts in 3.5 s.
        assert((st.errors.network ?? 0) <= 3, `attempts in 3.5 s: ${st.errors.network}`);
        assertGreater(st.spooled, 100);
      });

      await step(t, "a proxy's 502/504 after the commit: read back, not resent", async () => {
        const p = proxy();
        p.rules.push({
          match: isInsert,
          action: { kind: "after", status: 502, body: "Bad Gateway" },
          times: 2,
        });
        p.rules.push({
          match: isInsert,
          action: { kind: "after", status: 504, body: "Gateway Timeout" },
          times: 3,
        });
        const s = await ClickHouseSink.open({
          config: cfg(p.url, `${tmp}/gw`, { table: "gw" }),
          retryMinMs: 20,
          retryMaxMs: 50,
        });
        for (let b = 0; b < 5; b++) {
          s.write(Array.from({ length: 10 }, (_, i) => testRow(b * 10 + i, "gw")));
          await s.persist();
        }
        assert(await s.drain(15_000), "drained");
        await s.close();
        assertEquals(await counts(ch, "gw"), { n: 50, uniq: 50 });
        assertEquals(p.seen.filter((x) => x.action === "after").length, 5);
        assertGreater(p.seen.filter((x) => isReadBack({ method: "POST", sql: x.sql })).length, 4);
        assertEquals(s.stats().shipped, 50);
      });

      await step(
        t,
        "413 and 400 without a code: quarantined after one attempt; the queue moves on",
        async () => {
          const p = proxy();
          p.rules.push({
            match: isInsert,
            action: { kind: "reply", status: 413, body: "Request Entity Too Large" },
            times: 1,
          });
          p.rules.push({
            match: isInsert,
            action: { kind: "reply", status: 400, body: "Bad Request" },
            times: 1,
          });
          const s = await ClickHouseSink.open({
            config: cfg(p.url, `${tmp}/poison4xx`, { table: "p4xx" }),
            retryMinMs: 20,
          });
          for (let b = 0; b < 3; b++) {
            s.write(Array.from({ length: 10 }, (_, i) => testRow(b * 10 + i, "p4xx")));
            await s.persist();
          }
          assert(await s.drain(10_000), "drained");
          await s.close();
          const st = s.stats();
          assertEquals([st.quarantined, st.shipped, st.errors.data], [20, 10, 2]);
          assertEquals(p.seen.filter(({ sql }) => sql.startsWith("INSERT")).length, 3, "one attempt each");
          assertEquals(await counts(ch, "p4xx"), { n: 10, uniq: 10 });
        },
      );

      await step(t, "a batch found partly in the table is its own outcome", async () => {
        for (
          const sql of ddl({
            database: "ja4ebpf",
            table: "partial",
            onCluster: "",
            distributedTable: "",
            ttlDays: 0,
            version: parseVersion("18.16.1"),
          })
        ) {
          await ch.query(sql);
        }
        const dir = `${tmp}/partial`;
        await leaveSpool(dir, "partial", "part", [10]);
        const [name] = spoolFiles(dir);
        const { rows, ids } = decodeRowBinary(
          await gunzipBytes(Deno.readFileSync(`${dir}/${name}`)),
          "legacy",
        );
        const lines = rows.slice(0, 4).map((r, i) =>
          encodeLineOpen(r, "legacy") + `,"batch_id":"${ids[i]}"}`
        );
        await ch.query(`INSERT INTO ja4ebpf.partial FORMAT JSONEachRow\n${lines.join("\n")}\n`);
        const s = await ClickHouseSink.open({
          config: cfg(ch.url, dir, { table: "partial" }),
          retryMinMs: 50,
        });
        assert(await s.drain(10_000), "drained");
        await s.close();
        const st = s.stats();
        assertEquals([st.shipped, st.dropped.partial, st.partial, st.quarantined], [4, 6, 1, 0]);
        assertEquals(await counts(ch, "partial"), { n: 4, uniq: 4 });
        assert(Deno.readTextFileSync(`${dir}/dead/${name}.reason`).includes("4 of 10"));
        const m = new AgentMetrics();
        m.syncSinks([st]);
        const scrape = parsePrometheusText(m.render());
        assertEquals(scrape.get("ja4ebpf_clickhouse_partial_batches_total"), 1);
        assertEquals(scrape.get('ja4ebpf_rows_dropped_total{reason="partial"}'), 6);
        assertEquals(scrape.get("ja4ebpf_accounting_errors_total"), 0);
      });

      await step(
        t,
        "the read-back is narrowed to the batch's servers and ts range (max_rows_to_read)",
        async () => {
          for (
            const sql of ddl({
              database: "ja4ebpf",
              table: "big",
              onCluster: "",
              distributedTable: "",
              ttlDays: 0,
              version: parseVersion("18.16.1"),
            })
          ) {
            await ch.query(sql);
          }
          // A busy day of another server in the same partition: 500k rows; the agent's user may read 100k.
          await ch.query(
            "INSERT INTO ja4ebpf.big (date, ts, server, path, batch_id) SELECT toDate('2026-01-15'), " +
              "toDateTime('2026-01-15 00:00:00', 'UTC') + intDiv(number, 6), 'other', 'x', 'y' FROM system.numbers LIMIT 500000",
          );
          const dir = `${tmp}/big`;
          await leaveSpool(dir, "big", "big", [10]);
          const s = await ClickHouseSink.open({
            config: cfg(ch.url, dir, { table: "big", user: NARROW.name, create: false }),
            password: new Secret(NARROW.password),
            retryMinMs: 50,
            retryMaxMs: 200,
          });
          const ok = await s.drain(10_000);
          await s.close();
          assert(
            ok,
            `drained: ${JSON.stringify(s.stats())} ${logs.filter((l) => l.includes("read-back")).slice(-1)}`,
          );
          const n = await ch.query("SELECT count() FROM ja4ebpf.big WHERE path LIKE '/r/big/%' FORMAT TSV");
          assertEquals(n.trim(), "10");
        },
      );

      await step(t, "a timeout after the commit and a connection cut mid-body: each batch once", async () => {
        const p = proxy();
        p.rules.push({ match: isInsert, action: { kind: "hang" }, times: 2 });
        p.rules.push({ match: isInsert, action: { kind: "cut" }, times: 2 });
        const s = await ClickHouseSink.open({
          config: cfg(p.url, `${tmp}/hang`, { table: "hang", timeout_ms: 1000 }),
          retryMinMs: 20,
          retryMaxMs: 50,
        });
        for (let b = 0; b < 6; b++) {
          s.write(Array.from({ length: 10 }, (_, i) => testRow(b * 10 + i, "hang")));
          await s.persist();
        }
        assert(await s.drain(20_000), "drained");
        await s.close();
        assertEquals(await counts(ch, "hang"), { n: 60, uniq: 60 });
        const st = s.stats();
        assertEquals(st.errors.timeout, 2);
        assertGreater(st.errors.network ?? 0, 1);
      });

      await step(
        t,
        "stop budget: close() cuts a hanging insert; the batch stays spooled, lands once",
        async () => {
          const p = proxy();
          p.rules.push({ match: isInsert, action: { kind: "hang" }, times: 1 });
          const dir = `${tmp}/budget`;
          const s = await ClickHouseSink.open({
            config: cfg(p.url, dir, { table: "budget", timeout_ms: 60_000 }),
            stopBudgetMs: 1000,
          });
          s.write(Array.from({ length: 10 }, (_, i) => testRow(i, "budget")));
          await s.persist();
          assert(await until(() => p.seen.some((x) => x.action === "hang"), 5000), "insert in flight");
          const t0 = Date.now();
          await s.close();
          const took = Date.now() - t0;
          assert(took < 10_000, `close() took ${took} ms with a 60 s request timeout`);
          assertEquals(s.stats().spooled, 10);
          const again = await ClickHouseSink.open({ config: cfg(ch.url, dir, { table: "budget" }) });
          assert(await again.drain(10_000), "drained");
          await again.close();
          assertEquals(await counts(ch, "budget"), { n: 10, uniq: 10 });
        },
      );

      await step(t, "every documented metric moves under the fault it names", async () => {
        const m = new AgentMetrics();
        const dir = `${tmp}/metrics`;
        // Rows an earlier process left: they enter the ledger at the spool stage and leave it shipped.
        await leaveSpool(dir, "metrics", "mreplay", [10]);
        const p = proxy();
        const s = await ClickHouseSink.open({
          config: cfg(p.url, dir, { table: "metrics", timeout_ms: 1000 }),
          transform: (o) => String(o.path).startsWith("/r/mpoison/") ? { ...o, pid: "x" } : o,
          retryMinMs: 20,
          retryMaxMs: 50,
        });
        s.observe(m.sinkObserver());
        let next = 0;
        const write = (tag: string) => {
          const rows = Array.from({ length: 10 }, (_, i) => testRow(next + i, tag));
          next += 10;
          m.rows.capture(rows.length);
          m.rows.move("correlate", "memory", rows.length);
          s.write(rows);
        };
        const scrape = () => {
          m.syncSinks([s.stats()]);
          return parsePrometheusText(m.render());
        };
        const err = (cls: string) => scrape().get(`ja4ebpf_clickhouse_errors_total{class="${cls}"}`) ?? 0;
        const fault = async (action: FaultAction, cls: string) => {
          p.rules.push({ match: isInsert, action, times: 1 });
          write("mfault");
          assert(await s.drain(10_000), `drained after ${action.kind}`);
          assertGreater(err(cls), 0, cls);
        };
        assert(await s.drain(10_000), "replayed");
        write("mok");
        assert(await s.drain(10_000), "ok batch");
        let sc = scrape();
        assertGreater(sc.get('ja4ebpf_clickhouse_insert_duration_seconds_count{outcome="ok"}') ?? 0, 0);
        assertGreater(sc.get('ja4ebpf_sink_last_success_timestamp_seconds{sink="clickhouse"}') ?? 0, 1.7e9);
        assertEquals(sc.get("ja4ebpf_rows_shipped_total"), 20);
        assertEquals(sc.get('ja4ebpf_rows_pending{stage="spool"}'), 0);
        await fault({
          kind: "reply",
          status: 500,
          body: "Code: 241, e.displayText() = DB::Exception: Memory limit",
        }, "retry");
        await fault({ kind: "hang" }, "timeout");
        await fault({ kind: "cut" }, "network");
        // Auth: the sink fails for longer than 60 s (fake time) → /healthz unhealthy; a success clears it.
        p.rules.push({
          match: isInsert,
          action: {
            kind: "reply",
            status: 401,
            body: "Code: 192, e.displayText() = DB::Exception: Unknown user",
          },
        });
        write("mauth");
        assert(await until(() => err("auth") > 0, 5000), "auth error counted");
        assertStringIncludes(
          m.health.check(Date.now() + 61_000).reasons.join(";"),
          "sink clickhouse failing",
        );
        p.rules.pop();
        assert(await s.drain(10_000), "drained after auth");
        assert(m.health.check(Date.now()).healthy, "healthy again");
        write("mpoison");
        assert(await s.drain(10_000), "poison");
        sc = scrape();
        assertGreater(sc.get('ja4ebpf_clickhouse_errors_total{class="quarantine"}') ?? 0, 0);
        assertEquals(sc.get("ja4ebpf_rows_quarantined_total"), 10);
        assertGreater(sc.get('ja4ebpf_clickhouse_insert_duration_seconds_count{outcome="error"}') ?? 0, 3);
        // Kernel ring drops: counted; the reads lost with them (the requests) in the ledger as rows lost
        // before capture, and seen by /healthz. Records that lose no request (SYN, close) are only counted.
        m.kernelDrop("ringbuf", 170);
        m.kernelDrop("lost_read", 150);
        sc = scrape();
        assertEquals(sc.get('ja4ebpf_bpf_drops_total{reason="ringbuf"}'), 170);
        assertEquals(sc.get('ja4ebpf_bpf_drops_total{reason="lost_read"}'), 150);
        assertEquals(sc.get('ja4ebpf_rows_dropped_total{reason="ringbuf_full"}'), 150);
        assertStringIncludes(m.health.check(Date.now()).reasons.join(";"), "dropped 150");
        await s.close();
        sc = scrape();
        const id = identityFromScrape(m.render());
        assertEquals(id.captured, id.resolved);
        assertEquals(sc.get("ja4ebpf_rows_captured_total"), 10 + 60 + 150);
        assertEquals(sc.get("ja4ebpf_accounting_errors_total"), 0);
        assertEquals(sc.get("ja4ebpf_rows_spooled"), 0);
      });
    } finally {
      setLogSink(prevLog);
      for (const p of proxies) await p.close();
      await ch.close();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
