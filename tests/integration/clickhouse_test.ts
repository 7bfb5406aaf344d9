/**
 * The ClickHouse sink against a real clickhouse-server (Debian's 18.16) on 127.0.0.1:18123: round trip of
 * every column, poison batch, auth error, secrets, crash (abandoned sink, SIGKILL'd process) and 100
 * "committed but the client saw a reset" faults through a TCP proxy.
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import { type ClickHouseConfig, DEFAULT_CONFIG, Secret } from "../../src/config/config.ts";
import { ClickHouseSink, gzip } from "../../src/sink/clickhouse.ts";
import { ddl, decodeRow, encodeLineOpen, parseVersion } from "../../src/sink/ch_schema.ts";
import { columnList, RowBinaryEncoder, stringBytes } from "../../src/sink/ch_rowbinary.ts";
import { emptyRow, type Row } from "../../src/sink/row.ts";
import { setLogSink } from "../../src/log.ts";
import { type ClickHouseServer, delay, startClickHouse } from "../helpers/clickhouse.ts";
import { testRow } from "../helpers/rows.ts";

const PASSWORD = `pw-${crypto.randomUUID()}`;

function chConfig(ch: ClickHouseServer, spool_dir: string, o: Partial<ClickHouseConfig>): ClickHouseConfig {
  return { ...DEFAULT_CONFIG.output.clickhouse, url: ch.url, spool_dir, flush_interval_ms: 100, ...o };
}

async function counts(ch: ClickHouseServer, table: string): Promise<{ n: number; uniq: number }> {
  const t = await ch.query(`SELECT count(), uniqExact(path) FROM ja4ebpf.${table} FORMAT TSV`);
  const [n, uniq] = t.trim().split("\t").map(Number);
  return { n, uniq };
}

/** Forwards TCP to ClickHouse; the first `faults` INSERTs are broken: 3 of 4 after the server answered
 * (committed, the client sees a reset), 1 of 4 before the request reaches the server. */
function faultProxy(upstreamPort: number, faults: number) {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const st = { left: faults, afterCommit: 0, beforeSend: 0 };
  const conns = new Set<Deno.Conn>();
  const pipe = async (
    from: Deno.Conn,
    to: Deno.Conn,
    onChunk: (b: Uint8Array) => boolean,
    done: () => void,
  ) => {
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (!onChunk(buf.subarray(0, n))) break;
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch { /* closed */ }
    done();
  };
  (async () => {
    for await (const c of l) {
      let u: Deno.Conn;
      try {
        u = await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort });
      } catch {
        c.close();
        continue;
      }
      conns.add(c).add(u);
      let faulting = false;
      let closed = false;
      const close = () => {
        if (closed) return;
        closed = true;
        for (const x of [c, u]) {
          conns.delete(x);
          try {
            x.close();
          } catch { /* closed */ }
        }
      };
      void pipe(c, u, (b) => {
        const head = new TextDecoder().decode(b.subarray(0, 40));
        if (head.startsWith("POST /?query=INSERT") && st.left > 0) {
          st.left--;
          if ((st.afterCommit + st.beforeSend) % 4 === 3) {
            st.beforeSend++;
            close();
            return false;
          }
          st.afterCommit++;
          faulting = true;
        }
        return true;
      }, close);
      void pipe(u, c, () => {
        if (faulting) {
          close();
          return false;
        }
        return true;
      }, close);
    }
  })().catch(() => {});
  return {
    port: (l.addr as Deno.NetAddr).port,
    st,
    close() {
      l.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

Deno.test({
  name: "clickhouse sink against clickhouse-server",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const ch = await startClickHouse({ users: [{ name: "agent", password: PASSWORD }] });
    const tmp = await Deno.makeTempDir({ prefix: "ja4ebpf-sink-" });
    const logs: string[] = [];
    const prevLog = setLogSink((l) => logs.push(l));
    try {
      await t.step("rows land and read back equal, every column", async () => {
        const sink = await ClickHouseSink.open({ config: chConfig(ch, `${tmp}/rt`, { table: "rt" }) });
        const rows = Array.from({ length: 1500 }, (_, i) => testRow(i, "rt"));
        // A second partition day in the same write: split into separate batches.
        rows.push(testRow(1500, "rt", Date.UTC(2026, 0, 16, 0, 0, 0, 1)));
        sink.write(rows);
        assert(await sink.drain(20_000), "drained");
        await sink.close();
        assertEquals(sink.server()?.generation, "legacy");
        assertEquals(sink.server()?.format, "RowBinary");
        const text = await ch.query("SELECT * FROM ja4ebpf.rt ORDER BY ts FORMAT JSONEachRow");
        const back = text.trim().split("\n").map((l) => decodeRow(JSON.parse(l)));
        assertEquals(back.length, rows.length);
        const byPath = new Map(back.map((r) => [r.path, r]));
        for (const r of rows) assertEquals(byPath.get(r.path), r, r.path);
        const s = sink.stats();
        assertEquals([s.emitted, s.shipped, s.spooled, s.buffered, s.quarantined], [1501, 1501, 0, 0, 0]);
        const parts = await ch.query(
          "SELECT count(DISTINCT batch_id), count(DISTINCT date) FROM ja4ebpf.rt FORMAT TSV",
        );
        assertEquals(parts.trim().split("\t")[1], "2");
      });

      await t.step("RowBinary of odd values reads back equal (encoder straight to the server)", async () => {
        for (
          const sql of ddl({
            database: "ja4ebpf",
            table: "odd",
            onCluster: "",
            distributedTable: "",
            ttlDays: 0,
            version: parseVersion("18.16.1"),
          })
        ) await ch.query(sql);
        const rows: Row[] = [
          { ...emptyRow(), ts: "2026-01-15T00:00:00.000Z", path: "/empty" },
          { ...testRow(1, "odd"), ts: "2028-02-29T23:59:59.999Z", pid: 0xffffffff, src_port: 65535 },
          { ...testRow(2, "odd"), user_agent: "Mozilla/5.0 ".repeat(60), path: "/p?q=ü€😀&x=\"'\\" },
          {
            ...testRow(3, "odd"),
            path: "/ctl\u0001\t\n\r\u001f",
            ja4h_r: "raw_a,b",
            ja4h_o: "o",
            ja4h_ro: "ro",
          },
          { ...testRow(4, "odd"), src: "2001:db8::1", dst: "::1", truncated: true },
          // (18.16 shows DateTime 0 as 0000-00-00 00:00:00, whatever the format it came in.)
          { ...testRow(5, "odd"), ts: "1970-01-02T00:00:00.001Z" },
        ];
        const enc = new RowBinaryEncoder();
        const id = stringBytes("f".repeat(32));
        const b = new Uint8Array(rows.reduce((n, r) => n + enc.maxBytes(r, id), 0));
        let p = 0;
        for (const r of rows) p = enc.write(r, "legacy", b, p, id);
        const q = encodeURIComponent(`INSERT INTO ja4ebpf.odd (${columnList("legacy")}) FORMAT RowBinary`);
        const res = await fetch(`${ch.url}/?query=${q}`, { method: "POST", body: b.subarray(0, p) });
        assertEquals([res.status, await res.text()], [200, ""]);
        const text = await ch.query("SELECT * FROM ja4ebpf.odd FORMAT JSONEachRow");
        const back = new Map(
          text.trim().split("\n").map((l) => decodeRow(JSON.parse(l))).map((r) => [r.path, r]),
        );
        for (const r of rows) assertEquals(back.get(r.path), r, r.path);
        assertEquals(back.size, rows.length);
      });

      await t.step(
        "a table that differs gets JSONEachRow (ALTER … MODIFY COLUMN); every row once",
        async () => {
          const dir = `${tmp}/fmt`;
          const sink = await ClickHouseSink.open({
            config: chConfig(ch, dir, { table: "fmt" }),
            retryMinMs: 50,
          });
          const rows = Array.from({ length: 60 }, (_, i) => testRow(i, "fmt"));
          sink.write(rows.slice(0, 30));
          assert(await sink.drain(10_000), "first half");
          assertEquals(sink.server()?.format, "RowBinary");
          // A wider pid: a RowBinary body would be misread from there on (the server runs out of bytes).
          await ch.query("ALTER TABLE ja4ebpf.fmt MODIFY COLUMN pid UInt64");
          sink.write(rows.slice(30, 45));
          await sink.persist();
          sink.write(rows.slice(45));
          assert(await sink.drain(10_000), "second half");
          await sink.close();
          assertEquals(sink.server()?.format, "JSONEachRow");
          const st = sink.stats();
          assertEquals([st.shipped, st.quarantined], [60, 0]);
          assertEquals(st.errors.data, 1, "the misread RowBinary insert, then JSONEachRow");
          const text = await ch.query("SELECT * FROM ja4ebpf.fmt FORMAT JSONEachRow");
          const back = new Map(
            text.trim().split("\n").map((l) => decodeRow(JSON.parse(l))).map((r) => [r.path, r]),
          );
          assertEquals(back.size, 60);
          for (const r of rows) assertEquals(back.get(r.path), r, r.path);
          assertEquals(await counts(ch, "fmt"), { n: 60, uniq: 60 });
          // A sink started on the altered table chooses JSONEachRow at once, and spools in it.
          const again = await ClickHouseSink.open({ config: chConfig(ch, `${tmp}/fmt2`, { table: "fmt" }) });
          const extra = Array.from({ length: 5 }, (_, i) => testRow(100 + i, "fmt"));
          for (const end = Date.now() + 5000; !again.server() && Date.now() < end;) await delay(20);
          assertEquals(again.server()?.format, "JSONEachRow");
          again.write(extra);
          await again.persist();
          const names = [...Deno.readDirSync(`${tmp}/fmt2`)].map((e) => e.name).filter((n) =>
            n.endsWith(".gz")
          );
          assert(names.every((n) => n.endsWith(".jsonl.gz")), names.join(","));
          assert(await again.drain(10_000));
          await again.close();
          assertEquals(await counts(ch, "fmt"), { n: 65, uniq: 65 });
        },
      );

      await t.step("spool files of an earlier version (.jsonl.gz) are still shipped, once", async () => {
        const dir = `${tmp}/old`;
        await Deno.mkdir(dir, { recursive: true });
        // As the version before RowBinary wrote them: JSONEachRow lines, the batch id in every row and the name.
        const rows = Array.from({ length: 40 }, (_, i) => testRow(i, "old"));
        const id = "0123456789abcdef0123456789abcdef";
        const body = rows.map((r) => encodeLineOpen(r, "legacy") + `,"batch_id":"${id}"}\n`).join("");
        await Deno.writeFile(`${dir}/000000000007-legacy-2026-01-15-40-${id}.jsonl.gz`, await gzip(body));
        const sink = await ClickHouseSink.open({ config: chConfig(ch, dir, { table: "old" }) });
        assertEquals(sink.stats().replayed, 40);
        sink.write(Array.from({ length: 10 }, (_, i) => testRow(40 + i, "old")));
        assert(await sink.drain(10_000), "drained");
        await sink.close();
        assertEquals([sink.stats().shipped, sink.server()?.format], [50, "RowBinary"]);
        assertEquals(await counts(ch, "old"), { n: 50, uniq: 50 });
        const text = await ch.query(`SELECT * FROM ja4ebpf.old WHERE batch_id = '${id}' FORMAT JSONEachRow`);
        const back = new Map(
          text.trim().split("\n").map((l) => decodeRow(JSON.parse(l))).map((r) => [r.path, r]),
        );
        for (const r of rows) assertEquals(back.get(r.path), r, r.path);
        assertEquals(
          [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".gz")).length,
          0,
          "spool empty",
        );
      });

      await t.step("docs/clickhouse.md example queries run on this server", async () => {
        const doc = await Deno.readTextFile(new URL("../../docs/clickhouse.md", import.meta.url));
        const queries = [...doc.slice(doc.indexOf("## Example queries")).matchAll(/```sql\n([\s\S]*?)```/g)]
          .map((m) => m[1]);
        assertEquals(queries.length, 4);
        for (const q of queries) {
          // Over all dates (the test rows are from 2026-01-15): the filters still parse and run.
          const sql = q.replaceAll("ja4ebpf.requests", "ja4ebpf.rt").replace(
            /today\(\) - \d+/,
            "toDate('2000-01-01')",
          )
            .replace("now() - 3600", "toDateTime('2000-01-01 00:00:00')");
          const out = await ch.query(sql + " FORMAT JSONEachRow");
          assert(out.trim().length > 0 || /tls_stacks > 3|'0000'/.test(q), `rows from:\n${q}`);
        }
      });

      await t.step("poison batch is quarantined after one attempt; the next batch lands", async () => {
        const dir = `${tmp}/poison`;
        const sink = await ClickHouseSink.open({
          config: chConfig(ch, dir, { table: "poison" }),
          // A string in a UInt32 column: Code 27 on 18.16.
          transform: (o) => o.path === "/r/bad/3" ? { ...o, pid: "not-a-number" } : o,
          retryMinMs: 50,
        });
        const t0 = Date.now();
        sink.write(Array.from({ length: 10 }, (_, i) => testRow(i, "bad")));
        await sink.persist();
        sink.write(Array.from({ length: 10 }, (_, i) => testRow(i, "good")));
        assert(await sink.drain(10_000), "drained");
        assert(Date.now() - t0 < 5000, "quarantined within 5 s");
        await sink.close();
        const s = sink.stats();
        assertEquals([s.quarantined, s.shipped, s.errors.data], [10, 10, 1]);
        const dead = [...Deno.readDirSync(`${dir}/dead`)].map((e) => e.name).sort();
        assertEquals(dead.length, 2);
        assert(dead[1].endsWith(".reason"));
        assert(Deno.readTextFileSync(`${dir}/dead/${dead[1]}`).includes("Code: 27"));
        assertEquals(await counts(ch, "poison"), { n: 10, uniq: 10 });
      });

      await t.step("auth error: keeps spooling, raises the alarm; password never logged", async () => {
        const dir = `${tmp}/auth`;
        const config = chConfig(ch, dir, { table: "auth", user: "agent", create: false });
        await ch.query(
          "CREATE TABLE ja4ebpf.auth AS ja4ebpf.rt",
        );
        const bad = await ClickHouseSink.open({
          config,
          password: new Secret("wrong-" + PASSWORD),
          retryMinMs: 50,
        });
        bad.write(Array.from({ length: 200 }, (_, i) => testRow(i, "auth")));
        await bad.persist();
        const deadline = Date.now() + 5000;
        while (bad.stats().alarm !== "auth" && Date.now() < deadline) await delay(50);
        bad.write(Array.from({ length: 100 }, (_, i) => testRow(200 + i, "auth")));
        await bad.persist();
        const s = bad.stats();
        assertEquals(s.alarm, "auth");
        assertGreater(s.errors.auth ?? 0, 0);
        assertEquals([s.shipped, s.spooled], [0, 300]);
        await bad.abandon();
        const good = await ClickHouseSink.open({ config, password: new Secret(PASSWORD), retryMinMs: 50 });
        assert(await good.drain(10_000), "drained with the right password");
        await good.close();
        assertEquals(good.stats().alarm, "");
        assertEquals(await counts(ch, "auth"), { n: 300, uniq: 300 });
        const all = logs.join("\n") + JSON.stringify([s, good.stats()]) + Deno.inspect(good);
        assert(logs.some((l) => l.includes("auth error")), "the alarm is logged");
        assert(!all.includes(PASSWORD), "password absent from logs, stats, inspect");
      });

      await t.step("abandoned sink (crash): a new sink over the same spool loses nothing", async () => {
        const dir = `${tmp}/crash`;
        // Nothing listens on the first URL: everything stays in the spool.
        const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const deadUrl = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
        l.close();
        const a = await ClickHouseSink.open({
          config: chConfig(ch, dir, { table: "crash", url: deadUrl }),
          retryMinMs: 50,
        });
        a.write(Array.from({ length: 700 }, (_, i) => testRow(i, "crash")));
        await a.persist();
        assertEquals(a.stats().spooled, 700);
        await a.abandon();
        // Then while shipping: abandoned mid-stream with inserts in flight.
        const b = await ClickHouseSink.open({
          config: chConfig(ch, dir, { table: "crash", batch_rows: 50 }),
          retryMinMs: 50,
        });
        assertEquals(b.stats().replayed, 700);
        for (let i = 700; i < 3000; i += 100) {
          b.write(Array.from({ length: 100 }, (_, k) => testRow(i + k, "crash")));
          await b.persist();
          await delay(2);
        }
        await b.abandon();
        const c = await ClickHouseSink.open({ config: chConfig(ch, dir, { table: "crash" }) });
        assert(await c.drain(20_000), "drained");
        await c.close();
        assertEquals(await counts(ch, "crash"), { n: 3000, uniq: 3000 });
      });

      await t.step(
        "SIGKILL of a process running the sink: the spool is replayed, no loss, no duplicate",
        async () => {
          const dir = `${tmp}/kill`;
          const child = new Deno.Command(Deno.execPath(), {
            args: [
              "run",
              "-A",
              new URL("../helpers/sink_child.ts", import.meta.url).pathname,
              dir,
              ch.url,
              "killed",
              "k",
            ],
            stdout: "piped",
            stderr: "null",
          }).spawn();
          let durable = 0;
          const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
          let pending = "";
          while (durable < 4000) {
            const { value, done } = await lines.read();
            if (done) break;
            pending += value;
            for (const m of pending.matchAll(/durable (\d+)\n/g)) durable = Number(m[1]);
            pending = pending.slice(pending.lastIndexOf("\n") + 1);
          }
          child.kill("SIGKILL");
          await child.status;
          await lines.cancel();
          assert(durable >= 4000, `child reported ${durable} durable rows`);
          const s = await ClickHouseSink.open({ config: chConfig(ch, dir, { table: "killed" }) });
          assert(await s.drain(20_000), "drained");
          await s.close();
          const { n, uniq } = await counts(ch, "killed");
          assertEquals(n, uniq, "no duplicates");
          const missing = await ch.query(
            `SELECT ${durable} - countIf(toUInt32(splitByChar('/', path)[4]) < ${durable}) FROM ja4ebpf.killed FORMAT TSV`,
          );
          assertEquals(missing.trim(), "0", "every row reported durable is in the table");
        },
      );

      await t.step("100 committed-then-reset faults: zero duplicates, zero loss", async () => {
        const proxy = faultProxy(18123, 100);
        try {
          const sink = await ClickHouseSink.open({
            config: chConfig(ch, `${tmp}/reset`, {
              table: "reset",
              url: `http://127.0.0.1:${proxy.port}`,
              batch_rows: 10,
              timeout_ms: 5000,
            }),
            retryMinMs: 5,
            retryMaxMs: 20,
          });
          // The table must exist before the first faulted insert.
          for (let i = 0; i < 1200; i += 10) {
            sink.write(Array.from({ length: 10 }, (_, k) => testRow(i + k, "reset")));
            await sink.persist();
          }
          assert(await sink.drain(40_000), "drained");
          await sink.close();
          assertEquals(proxy.st.left, 0, "all faults injected");
          assertEquals(proxy.st.afterCommit, 75);
          assertEquals(await counts(ch, "reset"), { n: 1200, uniq: 1200 });
          assertEquals(sink.stats().shipped, 1200);
          assertGreater(sink.stats().errors.network ?? 0, 99);
        } finally {
          proxy.close();
        }
      });
    } finally {
      setLogSink(prevLog);
      await ch.close();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
