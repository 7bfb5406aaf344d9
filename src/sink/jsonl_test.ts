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
    ["a long value (not cached)", [row({ user_agent: "u".repeat(5000), path: "/" + "p".repeat(70000) })]],
    ["the same row twice (cached values)", [typical, typical]],
  ];
  const enc = new JsonLinesEncoder(64);
  for (const [name, rows] of cases) {
    await t.step(name, () => assertEquals(enc.encode(rows), reference(rows)));
  }
});

Deno.test("JsonLinesEncoder: random rows, one encoder across batches (cache and buffer reuse)", () => {
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
  const enc = new JsonLinesEncoder(16);
  for (let batch = 0; batch < 200; batch++) {
    const rows = Array.from({ length: 1 + rnd(5) }, () =>
      row({
        ts: str(),
        host: str(),
        src: str(),
        src_port: rnd(65536),
        method: str(),
        path: str(),
        user_agent: str(),
        ja4h_r: str(),
        ja4: str(),
        tls_server_name: str(),
        truncated: rnd(2) === 1,
      }));
    assertEquals(enc.encode(rows), reference(rows), `batch ${batch}`);
  }
});
