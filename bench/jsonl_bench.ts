/**
 * JSON lines for the stdout and file sinks: rows encoded straight into bytes (JsonLinesEncoder) against the
 * string way (jsonLines + TextEncoder), batches of 256 typical rows (same connection's values repeat).
 *
 *   deno bench -A bench/jsonl_bench.ts
 */
import { JsonLinesEncoder } from "../src/sink/jsonl.ts";
import { emptyRow, jsonLines, type Row } from "../src/sink/row.ts";

const UA =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const rows: Row[] = Array.from({ length: 256 }, (_, i) => ({
  ...emptyRow(),
  ts: `2026-12-04T20:25:02.${String(i % 1000).padStart(3, "0")}Z`,
  host: "web-1",
  server: "nginx",
  pid: 4242,
  capture: "tracepoint",
  src: "127.0.0.1",
  src_port: 40000 + (i >> 4),
  dst: "127.0.0.1",
  dst_port: 80,
  method: "GET",
  path: `/static/app.js?v=${i}`,
  http_version: "11",
  host_header: "localhost",
  user_agent: UA,
  ja4h: "ge11nn050000_4e59edc1297a_000000000000_000000000000",
  ja4t: "65495_2-4-8-1-3_65495_7",
}));
const enc = new TextEncoder();
const jsonl = new JsonLinesEncoder();
let sink = 0;

Deno.bench("jsonLines + TextEncoder (256 rows)", { group: "jsonl", baseline: true }, () => {
  sink += enc.encode(jsonLines(rows)).length;
});
Deno.bench("JsonLinesEncoder (256 rows)", { group: "jsonl" }, () => {
  sink += jsonl.encode(rows).length;
});
