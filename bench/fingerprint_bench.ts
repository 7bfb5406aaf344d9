/**
 * Per-event cost of the fingerprint path: ClientHello bytes → JA4 (record reassembly + parse + all four
 * variants) and HTTP/1 request head bytes → JA4H (parse + all four variants), plus the hash12 choice.
 * The plain lines repeat one input, so hash12's memo hits (the steady state of real traffic, where few
 * distinct lists recur); the "memo cleared" line is the cost for a never-seen fingerprint.
 *   deno bench -A bench/fingerprint_bench.ts
 */
import { readClientHello } from "../src/parse/tls.ts";
import { parseRequestHead } from "../src/parse/http1.ts";
import { ja4 } from "../src/fingerprint/ja4.ts";
import { ja4h } from "../src/fingerprint/ja4h.ts";
import { clearHash12Cache, hash12, hash12Pure } from "../src/fingerprint/sha.ts";
import { hash12Node } from "../tests/helpers/hash.ts";
import { fromHex } from "../src/parse/bytes.ts";

const tls = JSON.parse(
  await Deno.readTextFile(new URL("../src/fingerprint/testdata/foxio_tls.json", import.meta.url)),
) as { client_hex: string }[];
const http = JSON.parse(
  await Deno.readTextFile(new URL("../src/fingerprint/testdata/foxio_http.json", import.meta.url)),
) as { client_hex: string }[];
const hello = fromHex(tls[0].client_hex); // Chrome, 517 bytes
const head = fromHex(http[0].client_hex); // curl with cookies, referer, accept-language

let sink = "";
Deno.bench("ClientHello bytes → JA4 (4 variants)", { group: "event", baseline: true }, () => {
  const r = readClientHello(hello);
  if (r.ok) sink = ja4(r.value).ja4;
});
// Worst case: every hello a never-seen fingerprint, so all four hashes miss the hash12 memo.
Deno.bench("ClientHello bytes → JA4, hash12 memo cleared", { group: "event" }, () => {
  clearHash12Cache();
  const r = readClientHello(hello);
  if (r.ok) sink = ja4(r.value).ja4;
});
Deno.bench("request head bytes → JA4H (4 variants)", { group: "event" }, () => {
  const r = parseRequestHead(head);
  if (r.ok) sink = ja4h(r.value).ja4h;
});

const short = "002f,0035,009c,1301"; // one SHA-256 block
const long = "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805";
Deno.bench(
  "hash12 pure, 1 block",
  { group: "hash12-short", baseline: true },
  () => void (sink = hash12Pure(short)),
);
Deno.bench("hash12 node:crypto, 1 block", { group: "hash12-short" }, () => void (sink = hash12Node(short)));
Deno.bench(
  "hash12 pure, 2 blocks",
  { group: "hash12-long", baseline: true },
  () => void (sink = hash12Pure(long)),
);
Deno.bench("hash12 node:crypto, 2 blocks", { group: "hash12-long" }, () => void (sink = hash12Node(long)));
Deno.bench("hash12 (chosen), 2 blocks", { group: "hash12-long" }, () => void (sink = hash12(long)));
globalThis.addEventListener("unload", () => void sink);
