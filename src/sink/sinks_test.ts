import { assert, assertEquals, assertMatch, assertNotEquals } from "../testing/asserts.ts";
import { DEFAULT_CONFIG } from "../config/config.ts";
import {
  classify,
  columns,
  ddl,
  decodeRow,
  encodeLineOpen,
  encodeRow,
  errorCode,
  parseVersion,
} from "./ch_schema.ts";
import { classifyFailure, ClickHouseSink, gunzip, gunzipBytes, gzip, STOP_BUDGET_MS } from "./clickhouse.ts";
import { decodeRowBinary } from "./ch_rowbinary.ts";
import { FileSink } from "./file.ts";
import { openOutputs } from "./mod.ts";
import fc from "fast-check";
import { hmacIp, loadIpKey, Redactor, stripQuery } from "./redact.ts";
import { emptyRow, jsonLines, type Row, rowFromJson, rowJson } from "./row.ts";
import { Spool } from "./spool.ts";
import { StdoutSink } from "./stdout.ts";
import { testRow } from "../../tests/helpers/rows.ts";
import { setLogSink } from "../log.ts";

function row(over: Partial<Row> = {}): Row {
  return { ...emptyRow(), ts: "2026-03-04T05:06:07.089Z", server: "nginx", src: "192.0.2.7", ...over };
}

Deno.test("redactor: raw JA4H blanked, query stripped, IP hashed — each switchable", async (t) => {
  const r = row({ path: "/a/b?token=x&u=1#frag", ja4h_r: "raw", ja4h_o: "o", ja4h_ro: "ro", ja4h: "h" });
  const P = DEFAULT_CONFIG.privacy;
  await t.step("defaults", () => {
    const o = new Redactor(P).apply(r);
    assertEquals([o.path, o.ja4h, o.ja4h_r, o.ja4h_o, o.ja4h_ro, o.src], [
      "/a/b",
      "h",
      "",
      "",
      "",
      "192.0.2.7",
    ]);
    assertEquals(r.path, "/a/b?token=x&u=1#frag", "input untouched");
  });
  await t.step("ship_raw_ja4h and strip_query off", () => {
    const o = new Redactor({ ...P, ship_raw_ja4h: true, strip_query: false }).apply(r);
    assertEquals([o.path, o.ja4h_r, o.ja4h_ro], [r.path, "raw", "ro"]);
  });
  await t.step("anonymize_ip: keyed, stable, IPv6-shaped in fd00::/8", () => {
    const k1 = new Uint8Array(32).fill(1);
    const k2 = new Uint8Array(32).fill(2);
    const a = new Redactor({ ...P, anonymize_ip: true }, k1).apply(r).src;
    assertEquals(a, hmacIp(k1, "192.0.2.7"));
    assertNotEquals(a, hmacIp(k2, "192.0.2.7"));
    assertNotEquals(a, hmacIp(k1, "192.0.2.8"));
    assertMatch(a, /^fd[0-9a-f]{0,2}(:[0-9a-f]{1,4}){7}$/);
  });
  await t.step("stripQuery", () => {
    for (
      const [i, o] of [["/", "/"], ["/x?", "/x"], ["/x#y?z", "/x"], ["/x?y#z", "/x"], ["/a/b#c", "/a/b"], [
        "",
        "",
      ]]
    ) {
      assertEquals(stripQuery(i), o);
    }
    // Same as cutting at the first '?' or '#', whatever the order and count of both.
    fc.assert(fc.property(fc.stringMatching(/^[/a-z?#]{0,12}$/), (p) => {
      const m = p.search(/[?#]/);
      assertEquals(stripQuery(p), m < 0 ? p : p.slice(0, m));
    }));
  });
});

Deno.test("loadIpKey creates a 0600 key once and reuses it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const a = await loadIpKey(`${dir}/ip.key`);
    assertEquals(Deno.statSync(`${dir}/ip.key`).mode! & 0o777, 0o600);
    assertEquals(await loadIpKey(`${dir}/ip.key`), a);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stdout sink writes JSON lines and counts", () => {
  const chunks: Uint8Array[] = [];
  const s = new StdoutSink({ writeSync: (p) => (chunks.push(p.slice()), p.length) });
  s.write([row({ pid: 1 }), row({ pid: 2 })]);
  const lines = new TextDecoder().decode(chunks[0]).trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines.map((l) => l.pid), [1, 2]);
  assertEquals([s.stats().emitted, s.stats().shipped], [2, 2]);
  const broken = new StdoutSink({
    writeSync: () => {
      throw new Deno.errors.BrokenPipe("closed");
    },
  });
  broken.write([row()]);
  assertEquals(broken.stats().dropped, { write_error: 1 });
});

Deno.test("a sink's stats() is a snapshot: neither the sink's later counting nor the reader's edits cross", () => {
  const broken = new StdoutSink({
    writeSync: () => {
      throw new Deno.errors.BrokenPipe("closed");
    },
  });
  broken.write([row()]);
  const snap = broken.stats();
  snap.dropped.write_error = 99;
  snap.errors.network = 5;
  snap.emitted = 42;
  assertEquals([broken.stats().dropped, broken.stats().errors, broken.stats().emitted], [
    { write_error: 1 },
    {},
    1,
  ]);
  broken.write([row()]);
  assertEquals([snap.dropped.write_error, broken.stats().dropped.write_error], [99, 2]);
});

Deno.test("file sink: mode 0600, size rotation keeps N files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/rows.jsonl`;
    const f = new FileSink({ path, maxSizeBytes: 2000, maxFiles: 2 });
    for (let i = 0; i < 40; i++) f.write([row({ pid: i })]);
    await f.close();
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, ["rows.jsonl", "rows.jsonl.1", "rows.jsonl.2"]);
    for (const n of names) {
      assertEquals(Deno.statSync(`${dir}/${n}`).mode! & 0o777, 0o600, n);
      assert(Deno.statSync(`${dir}/${n}`).size <= 2000, n);
    }
    const last = Deno.readTextFileSync(path).trim().split("\n").map((l) => JSON.parse(l).pid);
    assertEquals(last.at(-1), 39);
    assertEquals(f.stats().shipped, 40);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("spool: atomic files listed in order after reopen; cap refuses; quarantine moves", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const s = await Spool.open(`${dir}/spool`, 100);
    assertEquals(Deno.statSync(`${dir}/spool`).mode! & 0o777, 0o700);
    const a = await s.put("legacy", "2026-01-01", 3, "a".repeat(32), new Uint8Array(40), "rowbinary");
    const b = await s.put("legacy", "2026-01-02", 2, "b".repeat(32), new Uint8Array(40), "jsonl");
    assert(a && b);
    assertEquals(
      await s.put("legacy", "2026-01-02", 9, "c".repeat(32), new Uint8Array(40), "rowbinary"),
      undefined,
      "over cap",
    );
    Deno.writeFileSync(`${dir}/spool/.tmp-partial`, new Uint8Array(5));
    const r = await Spool.open(`${dir}/spool`, 100);
    assertEquals(r.entries().map((e) => [e.id[0], e.rows, e.date, e.format]), [
      ["a", 3, "2026-01-01", "rowbinary"],
      ["b", 2, "2026-01-02", "jsonl"],
    ]);
    assertEquals(a.path.slice(-13), ".rowbinary.gz");
    assertEquals([r.rows, r.bytes], [5, 80]);
    assert(
      ![...Deno.readDirSync(`${dir}/spool`)].some((e) => e.name.startsWith(".tmp-")),
      "partial write removed",
    );
    await r.quarantine(r.head()!, "Code: 27");
    await r.remove(r.head()!);
    assertEquals([r.length, r.rows, r.bytes], [0, 0, 0]);
    assertEquals([...Deno.readDirSync(`${dir}/spool/dead`)].length, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("clickhouse schema: encode/decode round trip per generation; DDL per version", async (t) => {
  const r = row({ src: "2001:db8::1", dst: "10.1.2.3", truncated: true, user_agent: 'ü"\\' });
  for (const gen of ["legacy", "modern"] as const) {
    await t.step(gen, () => {
      const o = encodeRow(r, gen);
      assertEquals(
        Object.keys(o).sort(),
        columns(gen).map(([n]) => n).filter((n) => n !== "batch_id").sort(),
      );
      assertEquals(decodeRow(JSON.parse(JSON.stringify(o))), r);
      // Absent (empty) strings are not written; ClickHouse fills the column default ('').
      const present = (x: Record<string, unknown>) =>
        Object.fromEntries(Object.entries(x).filter(([, v]) => v !== ""));
      assertEquals(encodeLineOpen(r, gen) + "}", JSON.stringify(present(o)), "fast path = reference");
      assertEquals(
        decodeRow(JSON.parse(encodeLineOpen(r, gen) + "}")),
        r,
        "absent values read back as empty",
      );
      const odd = { ...r, ts: "2026-03-04T05:06:07Z", pid: 7 };
      assertEquals(
        encodeLineOpen(odd, gen) + "}",
        JSON.stringify(present(encodeRow(odd, gen))),
        "non-canonical ts",
      );
    });
  }
  assertEquals(encodeRow(r, "legacy").date, "2026-03-04");
  assertEquals(encodeRow(r, "modern").dst, "::ffff:10.1.2.3");
  const old = ddl({
    database: "d",
    table: "t",
    onCluster: "c",
    distributedTable: "dt",
    ttlDays: 7,
    version: parseVersion("18.16.1"),
  });
  assertEquals(old.length, 2);
  assert(old[1].includes("PARTITION BY date") && !old[1].includes("TTL") && !old[1].includes("ON CLUSTER"));
  const cur = ddl({
    database: "d",
    table: "t",
    onCluster: "c",
    distributedTable: "dt",
    ttlDays: 7,
    version: parseVersion("24.3.2.1"),
  });
  assertEquals(cur.length, 3);
  assert(
    cur[1].includes("DateTime64(3, 'UTC')") && cur[1].includes("LowCardinality") && cur[1].includes("IPv6"),
  );
  assert(cur[1].includes("TTL toDateTime(ts) + INTERVAL 7 DAY") && cur[1].includes("ON CLUSTER c"));
  assert(cur[2].includes("ENGINE = Distributed(c, d, t, rand())"));
});

Deno.test("clickhouse error classification", async (t) => {
  const cases: [number, string, Record<string, string>, string][] = [
    [500, "Code: 27, e.displayText() = DB::Exception: Cannot parse input", {}, "data"],
    [500, "Code: 117, e.displayText() = Unknown field", {}, "data"],
    [401, "Code: 193, e.displayText() = Wrong password", {}, "auth"],
    [401, "", {}, "auth"],
    [404, "Code: 60, e.displayText() = Table doesn't exist", {}, "config"],
    [500, "Code: 252, Too many parts", {}, "transient"],
    [500, "boom", { "X-ClickHouse-Exception-Code": "241" }, "transient"],
    [400, "", { "X-ClickHouse-Exception-Code": "62" }, "data"],
    [503, "", {}, "transient"],
  ];
  for (const [status, body, h, cls] of cases) {
    await t.step(`${status} ${body.slice(0, 12)} ${JSON.stringify(h)}`, () => {
      assertEquals(classify(status, errorCode(new Headers(h), body)), cls);
    });
  }
});

Deno.test("rowJson: JSON.stringify's bytes, absent strings left out, read back equal", async (t) => {
  const full = row({
    user_agent: 'ü"\\ \u0001 \ud83d\ude00 \ud800',
    ja4: "t13d",
    ja4t: "64240_2-4_1460_7",
    truncated: true,
  });
  for (const [name, r] of [["full", full], ["sparse", row({ path: "/only" })]] as const) {
    await t.step(name, () => {
      const line = rowJson(r);
      const want = Object.fromEntries(Object.entries(r).filter(([, v]) => v !== ""));
      assertEquals(line, JSON.stringify(want));
      assertEquals(rowFromJson(JSON.parse(line)), r);
      assert(!line.includes('""'), "no empty strings written");
    });
  }
  assertEquals(jsonLines([full, full]), rowJson(full) + "\n" + rowJson(full) + "\n");
});

Deno.test("gzip round trip", async () => {
  const s = "x".repeat(10000) + "ü";
  const z = await gzip(s);
  assert(z.length < 200);
  assertEquals(await gunzip(z), s);
});

Deno.test("openOutputs: default config = stdout only, privacy filter in front", async () => {
  const chunks: Uint8Array[] = [];
  const out = await openOutputs(structuredClone(DEFAULT_CONFIG) as typeof DEFAULT_CONFIG, {
    stdout: { writeSync: (p) => (chunks.push(p.slice()), p.length) },
  });
  out.write([row({ path: "/p?q=1", ja4h_r: "secret-cookie" })]);
  await out.close();
  const text = new TextDecoder().decode(chunks[0]);
  assert(!text.includes("secret-cookie") && text.includes('"path":"/p"'), text);
  assertEquals(out.allStats().map((s) => s.name), ["stdout"]);
});

Deno.test("the unit's TimeoutStopSec leaves room for the sink's stop budget", async () => {
  const unit = await Deno.readTextFile(new URL("../../rpm/ja4ebpf.service", import.meta.url));
  const m = /^TimeoutStopSec=(\d+)s$/m.exec(unit);
  assert(m, "TimeoutStopSec=Ns in the unit");
  // The flush budget plus ≥ 10 s for detaching the hooks, draining the ring and closing.
  assert(
    Number(m[1]) * 1000 >= STOP_BUDGET_MS + 10_000,
    `TimeoutStopSec=${m[1]}s, budget ${STOP_BUDGET_MS} ms`,
  );
});

Deno.test("clickhouse answers without a code (from a proxy) are classified", () => {
  assertEquals(classifyFailure(502, undefined), { cls: "transient", ambiguous: true });
  assertEquals(classifyFailure(504, undefined), { cls: "transient", ambiguous: true });
  assertEquals(classifyFailure(413, undefined), { cls: "data", ambiguous: false });
  assertEquals(classifyFailure(400, undefined), { cls: "data", ambiguous: false });
  assertEquals(classifyFailure(429, undefined), { cls: "transient", ambiguous: false });
  assertEquals(classifyFailure(401, undefined), { cls: "auth", ambiguous: false });
  assertEquals(classifyFailure(500, 241), { cls: "transient", ambiguous: false });
  assertEquals(classifyFailure(500, 117), { cls: "data", ambiguous: false });
});

Deno.test("spool: dead/ is capped (counted by the caller); a failed move leaves the batch on disk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const s = await Spool.open(`${dir}/spool`, 1000, 90);
    const a = await s.put("legacy", "2026-01-01", 3, "a".repeat(32), new Uint8Array(40), "rowbinary");
    const b = await s.put("legacy", "2026-01-01", 4, "b".repeat(32), new Uint8Array(40), "rowbinary");
    const c = await s.put("legacy", "2026-01-01", 5, "c".repeat(32), new Uint8Array(40), "rowbinary");
    assert(a && b && c);
    const ra = await s.quarantine(a, "Code: 27");
    assert(ra.kept, "first fits");
    // 40 + reason (9 bytes) kept; 49 more would pass 90 bytes, so b is deleted.
    assertEquals(await s.quarantine(b, "Code: 27"), { kept: false, why: "dead_full" });
    assert(
      !Deno.statSync(`${dir}/spool`).isFile &&
        ![...Deno.readDirSync(`${dir}/spool`)].some((e) => e.name.includes("b".repeat(32))),
    );
    // Reopen counts what dead/ already holds.
    const r = await Spool.open(`${dir}/spool`, 1000, 90);
    assertEquals(r.deadBytes, s.deadBytes);
    // dead/ unwritable (a file in its place): the batch leaves the queue, stays in the spool for the next start.
    const big = await Spool.open(`${dir}/other`, 1000, 1e9);
    const d = await big.put("legacy", "2026-01-01", 5, "d".repeat(32), new Uint8Array(40), "rowbinary");
    await Deno.remove(`${dir}/other/dead`, { recursive: true });
    await Deno.writeTextFile(`${dir}/other/dead`, "");
    const rd = await big.quarantine(d!, "Code: 27");
    assertEquals([rd.kept, !rd.kept && rd.why, big.length], [false, "dead_error", 0]);
    assert(Deno.statSync(d!.path).isFile, "left on disk");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A ClickHouse sink whose server never answers (a port just closed), its spool in a temp dir: `fn` writes rows,
 * persists and abandons; the batches stay in the spool for the test to read.
 */
async function offlineSink(
  config: Partial<typeof DEFAULT_CONFIG.output.clickhouse>,
  fn: (sink: ClickHouseSink, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  const prevLog = setLogSink(() => {});
  try {
    const sink = await ClickHouseSink.open({
      config: { ...DEFAULT_CONFIG.output.clickhouse, url, spool_dir: dir, ...config },
      retryMinMs: 60_000,
    });
    await fn(sink, dir);
  } finally {
    setLogSink(prevLog);
    await Deno.remove(dir, { recursive: true });
  }
}

/** The spool's batch files, by name. */
const spooled = (dir: string) =>
  [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".gz")).sort();

Deno.test("clickhouse sink without a server: one RowBinary batch per day, a random id per batch", async () => {
  await offlineSink({ batch_rows: 50 }, async (sink, dir) => {
    const day = (d: number, i: number) => ({
      ...testRow(i, "d"),
      ts: `2026-01-${d}T10:00:00.${String(i).padStart(3, "0")}Z`,
    });
    // Days interleaved within one write; 120 rows of day 15 pass batch_rows (50) twice.
    const rows = Array.from({ length: 150 }, (_, i) => day(i % 5 === 0 ? 16 : 15, i));
    sink.write(rows);
    await sink.persist();
    await sink.abandon();
    const names = spooled(dir);
    assert(
      names.every((n) => /^\d{12}-legacy-2026-01-1[56]-\d+-[0-9a-f]{32}\.rowbinary\.gz$/.test(n)),
      names.join(),
    );
    const back: Row[] = [];
    const ids = new Set<string>();
    for (const n of names) {
      const id = n.slice(-45, -13);
      ids.add(id);
      const { rows: got, ids: rowIds } = decodeRowBinary(
        await gunzipBytes(Deno.readFileSync(`${dir}/${n}`)),
        "legacy",
      );
      assertEquals(new Set(rowIds), new Set([id]), "every row carries its file's id");
      assertEquals(new Set(got.map((r) => r.ts.slice(0, 10))).size, 1, "one day per batch");
      assertEquals(Number(n.split("-")[5]), got.length, "row count in the name");
      back.push(...got);
    }
    assertEquals(ids.size, names.length, "a fresh id per batch");
    assertEquals(
      back.sort((a, b) => a.path.localeCompare(b.path)),
      rows.sort((a, b) => a.path.localeCompare(b.path)),
    );
  });
});

Deno.test("clickhouse sink: a batch compressed chunk by chunk decompresses to its rows, one row larger than a chunk", async () => {
  await offlineSink({}, async (sink, dir) => {
    // ~1 MB of rows (four 256 KiB chunks), written in pieces as the agent's batches come; row 1500 carries a
    // 400 kB path (a chunk of its own), and the last rows end in a chunk that is not full.
    const rows = Array.from({ length: 3000 }, (_, i) => testRow(i, "c"));
    rows[1500].path = "/" + "x".repeat(400_000);
    for (let i = 0; i < rows.length; i += 128) sink.write(rows.slice(i, i + 128));
    await sink.persist();
    await sink.abandon();
    const names = spooled(dir);
    assertEquals(names.length, 1, names.join());
    const body = Deno.readFileSync(`${dir}/${names[0]}`);
    assert(body.length < 200_000, `compressed to ${body.length} bytes`);
    const { rows: got } = decodeRowBinary(await gunzipBytes(body), "legacy");
    assertEquals(got, rows);
  });
});
