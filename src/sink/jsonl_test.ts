import { assertEquals } from "../testing/asserts.ts";
import { JsonLinesEncoder } from "./jsonl.ts";
import { emptyRow, jsonLines, type Row } from "./row.ts";

const utf8 = new TextEncoder();

function row(p: Partial<Row>): Row {
  return { ...emptyRow(), ...p };
}

/** The reference: the rows' JSON lines as strings, then UTF-8. */
function reference(rows: Row[]): Uint8Array {
  return utf8.encode(jsonLines(rows));
}

const typical = row({
  ts: "2026-12-04T20:25:02.123Z",
  host: "web-1",
  server: "nginx",
  pid: 4242,
  capture: "tracepoint",
  src: "203.0.113.7",
  src_port: 51234,
  dst: "10.0.0.1",
  dst_port: 443,
  method: "GET",
  path: "/search?q=a",
  http_version: "11",
  host_header: "example.com",
  user_agent:
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
  ja4h: "ge11cn060000_4e59edc1297a_000000000000_000000000000",
  ja4: "t13d1516h2_8daaf6152771_02713d6af862",
  ja4t: "64240_2-4-8-1-3_1460_7",
  tls_server_name: "example.com",
});

Deno.test("JsonLinesEncoder: the bytes of jsonLines + UTF-8", async (t) => {
  const cases: [string, Row[]][] = [
    ["no rows", []],
    ["typical", [typical]],
    ["sparse (absent strings left out)", [row({ path: "/only" })]],
    ["raw JA4H forms", [row({ ja4h_r: "ge11_cookie=a;b", ja4h_o: "x", ja4h_ro: "y", truncated: true })]],
    ["escapes and controls", [row({ path: '/"q"\\\u0001\u001f\n', user_agent: "tab\there" })]],
    ["non-ASCII", [row({ path: "/ü/日本", host_header: "bücher.example", user_agent: "\ud83d\ude00 bot" })]],
    ["lone surrogates", [row({ path: "/\ud800x", user_agent: "\udfff" })]],
    ["DEL is not escaped", [row({ path: "/\u007f" })]],
    ["numbers outside the fast path", [
      row({ pid: -1, src_port: 1.5, dst_port: NaN }),
      row({ pid: 2 ** 40 }),
    ]],
    ["zeros", [row({ pid: 0, src_port: 0, dst_port: 0 })]],
    ["digit counts", [
      row({ pid: 9, src_port: 10, dst_port: 99 }),
      row({ pid: 100, src_port: 65535, dst_port: 99999 }),
      row({ pid: 4194304, src_port: 999999999, dst_port: 1000000000 }),
      row({ pid: 2 ** 31 - 1, src_port: 2 ** 31, dst_port: 2 ** 32 - 1 }),
      row({ pid: -0, src_port: 1e21, dst_port: 0.5 }),
    ]],
    ["a long value (not cached)", [row({ user_agent: "u".repeat(5000), path: "/" + "p".repeat(70000) })]],
    ["the same row twice (cached values)", [typical, typical]],
    // A JA4H with cookies is a user's own: written out, neither cached nor kept as a tail.
    ["users' own JA4Hs between memo hits", [
      { ...typical, ja4h: "ge11cr06enus_4e59edc1297a_4da5efaf0cbd_1c2b3d4e5f60" },
      typical,
      { ...typical, ja4h: "ge11cr06enus_4e59edc1297a_4da5efaf0cbd_99aa88bb77cc" },
      { ...typical, ja4h: "ge11cr06enus_4e59edc1297a_4da5efaf0cbd_1c2b3d4e5f60" },
      typical,
    ]],
  ];
  const enc = new JsonLinesEncoder(64);
  for (const [name, rows] of cases) {
    await t.step(name, () => assertEquals(enc.encode(rows), reference(rows)));
  }
});

Deno.test("JsonLinesEncoder: random rows, one encoder across batches (cache and buffer reuse)", async (t) => {
  const alphabet = [
    "a",
    "Z",
    "/",
    " ",
    '"',
    "\\",
    "\n",
    "\u0000",
    "é",
    "日",
    "\ud83d\ude00",
    "\ud800",
    "\u007f",
  ];
  let seed = 7;
  const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  const str = () => Array.from({ length: rnd(12) }, () => alphabet[rnd(alphabet.length)]).join("");
  // A slab of 1 KiB fills every few batches: the memos start over mid-row again and again.
  for (const slab of [undefined, 1024]) {
    await t.step(slab ? `memo slab of ${slab} bytes` : "default slab", () => {
      const enc = new JsonLinesEncoder(16, slab);
      // A few values recur (as User-Agents and fingerprints do), so memo hits happen across resets.
      const pool = Array.from({ length: 6 }, str);
      const val = () => rnd(3) === 0 ? str() : pool[rnd(pool.length)];
      for (let batch = 0; batch < 300; batch++) {
        const rows = Array.from({ length: 1 + rnd(5) }, () =>
          row({
            ts: str(),
            host: val(),
            src: str(),
            src_port: rnd(65536),
            method: val(),
            path: str(),
            user_agent: val(),
            ja4h: val(),
            ja4h_r: str(),
            ja4: val(),
            tls_server_name: val(),
            truncated: rnd(2) === 1,
          }));
        assertEquals(enc.encode(rows), reference(rows), `batch ${batch}`);
      }
    });
  }
});

Deno.test("JsonLinesEncoder: rows that share all but one field after the path (the tail memo)", () => {
  // Rows are one base row with at most one field after the path changed (to a shorter, as long or longer
  // value), so most rows find a memo entry for their JA4H that differs from them in exactly one field:
  // every row must be encoded from its own values, never from the entry's.
  const base: Partial<Row> = {
    ts: "2026-12-06T03:00:00.000Z",
    src: "10.0.0.1",
    src_port: 40000,
    method: "GET",
    path: "/a",
    http_version: "11",
    host_header: "h.example",
    user_agent: "ua/1",
    ja4h: "ge11nn02_a",
    ja4h_r: "rr",
    ja4h_o: "oo",
    ja4h_ro: "ro",
    ja4: "t13d",
    ja4_r: "t13d_r",
    ja4t: "64240_2-4-8-1-3_1460_7",
    tls_server_name: "h.example",
    truncated: false,
  };
  const other: Partial<Row> = {
    http_version: "10",
    host_header: "",
    user_agent: "ua/22",
    ja4h: "ge11nn02_b",
    ja4h_r: "",
    ja4h_o: 'o"',
    ja4h_ro: "rx",
    ja4: "t12d",
    ja4_r: "",
    ja4t: "65495_2-4-8-1-3_65495_7",
    tls_server_name: "ü.example",
    truncated: true,
  };
  const keys = Object.keys(other) as (keyof Row)[];
  // mulberry32: every key gets picked (the low bits of a power-of-two LCG cycle through a few values only).
  let seed = 11;
  const rnd = (n: number) => {
    let z = (seed = (seed + 0x6d2b79f5) | 0);
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) % n;
  };
  const enc = new JsonLinesEncoder(16);
  for (let batch = 0; batch < 400; batch++) {
    const rows = Array.from({ length: 1 + rnd(4) }, () => {
      const k = keys[rnd(keys.length * 2)];
      return row(k === undefined ? base : { ...base, [k]: other[k] });
    });
    assertEquals(enc.encode(rows), reference(rows), `batch ${batch}`);
  }
});
