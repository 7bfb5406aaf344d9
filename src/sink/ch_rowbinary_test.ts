import { assert, assertEquals, assertThrows } from "../testing/asserts.ts";
import {
  columnList,
  decodeRowBinary,
  ipv6Bytes,
  ipv6Text,
  RowBinaryEncoder,
  stringBytes,
  tsMillis,
} from "./ch_rowbinary.ts";
import { columns, type Generation } from "./ch_schema.ts";
import { emptyRow, type Row } from "./row.ts";

const ID = "0123456789abcdef0123456789abcdef";

function base(): Row {
  return {
    ...emptyRow(),
    ts: "2026-01-15T12:00:00.007Z",
    host: "h",
    server: "nginx",
    pid: 1,
    capture: "tracepoint",
    src: "10.0.0.1",
    src_port: 1,
    dst: "10.0.0.2",
    dst_port: 2,
    method: "GET",
    path: "/",
  };
}

function encode(rows: Row[], gen: Generation, enc = new RowBinaryEncoder()): Uint8Array {
  const id = stringBytes(ID);
  let n = 0;
  for (const r of rows) n += enc.maxBytes(r, id);
  const b = new Uint8Array(n);
  let p = 0;
  for (const r of rows) {
    const before = p;
    p = enc.write(r, gen, b, p, id);
    assert(p - before <= enc.maxBytes(r, id), "within maxBytes");
  }
  return b.slice(0, p);
}

/**
 * One row's bytes split by column, read by the column types of ch_schema.ts (independently of the encoder):
 * the layout each type must have in RowBinary.
 */
function split(b: Uint8Array, gen: Generation): Map<string, number[]> {
  const out = new Map<string, number[]>();
  let p = 0;
  for (const [name, type] of columns(gen)) {
    const start = p;
    const fixed: Record<string, number> = {
      Date: 2,
      "DateTime('UTC')": 4,
      "DateTime64(3, 'UTC')": 8,
      UInt8: 1,
      UInt16: 2,
      UInt32: 4,
      IPv6: 16,
    };
    if (type in fixed) p += fixed[type];
    else {
      assert(type === "String" || type === "LowCardinality(String)", type);
      let n = 0, shift = 1;
      for (;;) {
        const c = b[p++];
        n += (c & 0x7f) * shift;
        shift *= 128;
        if (c < 0x80) break;
      }
      p += n;
    }
    out.set(name, [...b.subarray(start, p)]);
  }
  assertEquals(p, b.length, "one row, nothing left over");
  return out;
}

const le = (v: number, n: number) => Array.from({ length: n }, (_, i) => Math.floor(v / 256 ** i) % 256);
const s = (t: string) => [...stringBytes(t)];

Deno.test("RowBinary: each column type's bytes", async (t) => {
  const day = Date.UTC(2026, 0, 15) / 86400000;
  const secs = Date.UTC(2026, 0, 15, 12) / 1000;
  const cases: [string, Generation, Partial<Row>, string, number[]][] = [
    ["Date: days since 1970, UInt16 LE", "legacy", {}, "date", le(day, 2)],
    ["DateTime('UTC'): seconds, UInt32 LE", "legacy", {}, "ts", le(secs, 4)],
    ["ts_ms UInt16", "legacy", { ts: "2026-01-15T12:00:00.999Z" }, "ts_ms", le(999, 2)],
    ["Date of the epoch", "legacy", { ts: "1970-01-01T00:00:00.000Z" }, "date", [0, 0]],
    ["DateTime64(3, 'UTC'): ms, Int64 LE", "modern", {}, "ts", le(secs * 1000 + 7, 8)],
    ["DateTime64 past 2^32 ms", "modern", { ts: "2106-02-07T06:28:16.000Z" }, "ts", le(4294967296000, 8)],
    ["UInt32 pid at its maximum", "legacy", { pid: 0xffffffff }, "pid", [255, 255, 255, 255]],
    ["UInt16 port", "legacy", { src_port: 0xfffe }, "src_port", [0xfe, 0xff]],
    ["UInt8 truncated true", "legacy", { truncated: true }, "truncated", [1]],
    ["UInt8 truncated false", "modern", { truncated: false }, "truncated", [0]],
    ["String ASCII", "legacy", { path: "/a?b=1" }, "path", s("/a?b=1")],
    ["String empty (absent)", "legacy", { ja4: "" }, "ja4", [0]],
    ["String UTF-8 (length in bytes)", "legacy", { path: "/ü€😀" }, "path", [
      10,
      0x2f,
      ...s("ü€😀").slice(1),
    ]],
    ["String of 200 bytes: 2-byte length", "legacy", { user_agent: "u".repeat(200) }, "user_agent", [
      0xc8,
      0x01,
      ...new Array(200).fill(0x75),
    ]],
    ["String past the cache limit", "legacy", { user_agent: "v".repeat(600) }, "user_agent", [
      0xd8,
      0x04,
      ...new Array(600).fill(0x76),
    ]],
    ["String with quote, backslash, NUL, newline (raw)", "legacy", { path: '"\\\0\n' }, "path", [
      4,
      0x22,
      0x5c,
      0,
      0x0a,
    ]],
    ["LowCardinality(String) = String", "modern", { method: "POST" }, "method", s("POST")],
    ["String address (legacy)", "legacy", { src: "2001:db8::1" }, "src", s("2001:db8::1")],
    ["IPv6 from IPv4: ::ffff:a.b.c.d", "modern", { src: "10.1.2.3" }, "src", [
      ...new Array(10).fill(0),
      0xff,
      0xff,
      10,
      1,
      2,
      3,
    ]],
    ["IPv6", "modern", { dst: "2001:db8::1" }, "dst", [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1]],
    ["IPv6 absent: ::", "modern", { src: "" }, "src", new Array(16).fill(0)],
    ["batch_id String", "modern", {}, "batch_id", s(ID)],
  ];
  for (const [name, gen, over, col, want] of cases) {
    await t.step(name, () => {
      const cols = split(encode([{ ...base(), ...over }], gen), gen);
      assertEquals(cols.get(col), want);
    });
  }
});

Deno.test("RowBinary: decode(encode(rows)) = rows, both generations, repeated values from the cache", () => {
  const rows: Row[] = [];
  for (let i = 0; i < 300; i++) {
    rows.push({
      ...base(),
      ts: new Date(Date.UTC(2026, 1, 28, 23, 59, 59, 990) + i * 3).toISOString(),
      src: i % 3 ? `10.0.${i >> 8}.${i & 255}` : `2001:db8::${(i + 1).toString(16)}`,
      user_agent: i % 7 ? "Mozilla/5.0 ü" : "",
      path: `/p/${i}/ü`,
      ja4h_r: i % 2 ? "" : `raw,${i}`,
      // Every fourth a user's own JA4H (cookie flag): written out, not cached.
      ...(i % 4
        ? {}
        : { ja4h: `ge11cr05enus_4e59edc1297a_4da5efaf0cbd_${(i * 7919).toString(16).padStart(12, "0")}` }),
      truncated: i % 5 === 0,
      pid: i * 1000,
    });
  }
  // The default slab, and one of 512 bytes that fills every few rows (the caches start over mid-batch).
  for (const enc of [new RowBinaryEncoder(), new RowBinaryEncoder(512)]) {
    for (const gen of ["legacy", "modern"] as Generation[]) {
      // Twice through one encoder: the second time the repeating values come from its cache.
      for (let k = 0; k < 2; k++) {
        const d = decodeRowBinary(encode(rows, gen, enc), gen);
        assertEquals(d.rows, rows, gen);
        assertEquals(new Set(d.ids), new Set([ID]));
      }
    }
  }
});

Deno.test("RowBinary: odd values", async (t) => {
  await t.step("a ts without milliseconds or unparsable: Date.parse, else the epoch (as encodeRow)", () => {
    const d = decodeRowBinary(
      encode([{ ...base(), ts: "2026-01-15T12:00:00Z" }, { ...base(), ts: "garbage" }], "legacy"),
      "legacy",
    );
    assertEquals(d.rows.map((r) => r.ts), ["2026-01-15T12:00:00.000Z", "1970-01-01T00:00:00.000Z"]);
  });
  await t.step("tsMillis = Date.parse on ISO times", () => {
    for (const ms of [0, 951782400000, 1709251199999, 1767225600000, 4102444800123, 253402300799999]) {
      const iso = new Date(ms).toISOString();
      assertEquals(tsMillis(iso), Date.parse(iso), iso);
    }
    assertEquals(tsMillis("2026-13-01T00:00:00.000Z"), 0, "month 13");
  });
  await t.step("a lone surrogate becomes U+FFFD", () => {
    const d = decodeRowBinary(encode([{ ...base(), path: "/\ud800x" }], "legacy"), "legacy");
    assertEquals(d.rows[0].path, "/\ufffdx");
  });
  await t.step("a truncated body throws", () => {
    const b = encode([base()], "legacy");
    assertThrows(() => decodeRowBinary(b.subarray(0, b.length - 3), "legacy"));
  });
  await t.step("column list for the insert", () => {
    assertEquals(columnList("legacy").split(", ").slice(0, 3), ["date", "ts", "ts_ms"]);
    assertEquals(columnList("modern").split(", ").at(-1), "batch_id");
  });
});

Deno.test("IPv6 text ↔ bytes", async (t) => {
  const cases: [string, string, string][] = [
    ["IPv4 mapped", "192.0.2.1", "192.0.2.1"],
    ["absent", "", ""],
    ["compressed", "2001:db8::1", "2001:db8::1"],
    ["full form → RFC 5952", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["longest zero run", "2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["single zero group stays", "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["loopback", "::1", "::1"],
    ["upper-case hex", "2001:DB8::A", "2001:db8::a"],
    ["a zone is not an address → ::", "fe80::1%eth0", ""],
    ["embedded IPv4", "64:ff9b::192.0.2.33", "64:ff9b::c000:221"],
    ["mapped written as IPv6", "::ffff:10.0.0.1", "10.0.0.1"],
    ["unparsable → ::", "not-an-address", ""],
    ["too many groups → ::", "1:2:3:4:5:6:7:8:9", ""],
  ];
  for (const [name, text, back] of cases) {
    await t.step(name, () => assertEquals(ipv6Text(ipv6Bytes(text)), back));
  }
});
