/**
 * Fuzz targets shared by the property tests (a fast slice on every test run) and scripts/fuzz.ts (the long
 * run). Each target feeds arbitrary bytes to one parser the way the agent does and returns normally; a
 * thrown exception is a bug. Seeds are real inputs (FoxIO ClientHellos/ServerHellos, HTTP heads) that the
 * arbitraries mutate.
 */
import fc from "fast-check";
import { parseClientHello, parseServerHello, TlsHandshakeReader } from "./tls.ts";
import { Http1RequestStream, parseRequestHead } from "./http1.ts";
import { parseTcpOptions } from "./tcp_options.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { ja4s } from "../fingerprint/ja4s.ts";
import { ja4h } from "../fingerprint/ja4h.ts";
import { ja4t } from "../fingerprint/ja4t.ts";

const fromHex = (s: string) => new Uint8Array(s.match(/../g)?.map((x) => parseInt(x, 16)) ?? []);

export interface Seeds {
  tls: Uint8Array[];
  http: Uint8Array[];
  tcp: Uint8Array[];
}

export async function loadSeeds(): Promise<Seeds> {
  const tlsV = JSON.parse(
    await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_tls.json", import.meta.url)),
  ) as { client_hex: string; server_hello_body_hex?: string }[];
  const httpV = JSON.parse(
    await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_http.json", import.meta.url)),
  ) as { client_hex: string }[];
  const tls = tlsV.map((v) => fromHex(v.client_hex));
  for (const v of tlsV) {
    if (!v.server_hello_body_hex) continue;
    const b = fromHex(v.server_hello_body_hex);
    const rec = new Uint8Array(9 + b.length);
    rec.set([22, 3, 3, (b.length + 4) >> 8, (b.length + 4) & 0xff, 2, 0, b.length >> 8, b.length & 0xff]);
    rec.set(b, 9);
    tls.push(rec);
  }
  const tcp = [
    "020405b4010303080101040 2",
    "020405b40103030601010 80a0000000100000000040 20000",
    "020405b40402080a000000010000000001030307",
  ].map((s) => fromHex(s.replaceAll(" ", "")));
  return { tls, http: httpV.map((v) => fromHex(v.client_hex)), tcp };
}

/** TLS: the stream reader over the given pushes, then every message through the hello parsers and JA4/JA4S. */
export function tlsTarget(pushes: Uint8Array[]): string[] {
  const r = new TlsHandshakeReader();
  const out: string[] = [];
  for (const p of pushes) {
    r.push(p);
    for (;;) {
      const m = r.next();
      if (!m.ok) break;
      if (m.value.type === 1) {
        const ch = parseClientHello(m.value.body);
        if (ch.ok) out.push(ja4(ch.value).ja4_ro);
      } else if (m.value.type === 2) {
        const sh = parseServerHello(m.value.body);
        if (sh.ok) out.push(ja4s(sh.value).ja4s_r);
      }
    }
  }
  return out;
}

/** HTTP/1: the stream over the given pushes, each head through JA4H; also the one-shot parser. */
export function http1Target(pushes: Uint8Array[]): string[] {
  const s = new Http1RequestStream();
  const out: string[] = [];
  for (const p of pushes) for (const h of s.push(p)) out.push(ja4h(h).ja4h_ro + "|" + h.headLength);
  if (pushes.length > 0) parseRequestHead(pushes[0]);
  return out;
}

export function tcpTarget(area: Uint8Array): string {
  parseTcpOptions(area);
  return ja4t({ window: 65535, options: area }) + ja4t({ window: 1, options: area }, { absent: "foxio" });
}

/** Splits bytes at the given cut points (sorted, deduplicated, clamped). */
export function splitAt(b: Uint8Array, cuts: number[]): Uint8Array[] {
  const pts = [...new Set(cuts.map((c) => Math.min(b.length, Math.max(0, c))))].sort((x, y) => x - y);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of pts) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  out.push(b.subarray(prev));
  return out;
}

/** Arbitrary: a seed with a few random byte edits, insertions or deletions; or purely random bytes. */
export function mutated(seeds: Uint8Array[], maxLen = 4096): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({
    pos: fc.nat(),
    op: fc.constantFrom("set", "insert", "delete", "truncate"),
    val: fc.integer({ min: 0, max: 255 }),
    n: fc.integer({ min: 1, max: 8 }),
  });
  const fromSeed = fc.tuple(fc.constantFrom(...seeds), fc.array(edit, { maxLength: 6 })).map(
    ([seed, edits]) => {
      let b = seed.slice();
      for (const e of edits) {
        if (b.length === 0) break;
        const p = e.pos % b.length;
        if (e.op === "set") b[p] = e.val;
        else if (e.op === "insert") {
          const nb = new Uint8Array(b.length + e.n);
          nb.set(b.subarray(0, p), 0);
          nb.fill(e.val, p, p + e.n);
          nb.set(b.subarray(p), p + e.n);
          b = nb;
        } else if (e.op === "delete") b = new Uint8Array([...b.subarray(0, p), ...b.subarray(p + e.n)]);
        else b = b.slice(0, p);
      }
      return b;
    },
  );
  return fc.oneof(
    { weight: 3, arbitrary: fromSeed },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: maxLen }) },
  );
}

/** Property set used by tests and the fuzz script. */
export function properties(seeds: Seeds) {
  const cuts = fc.array(fc.nat({ max: 4096 }), { maxLength: 6 });
  return {
    tlsNeverThrows: fc.property(mutated(seeds.tls), cuts, (b, c) => {
      tlsTarget(splitAt(b, c));
    }),
    tlsSplitEqualsUnsplit: fc.property(fc.constantFrom(...seeds.tls), cuts, (b, c) => {
      const whole = tlsTarget([b]);
      const split = tlsTarget(splitAt(b, c));
      if (whole.join("\n") !== split.join("\n") || whole.length === 0) throw new Error("split != unsplit");
    }),
    http1NeverThrows: fc.property(mutated(seeds.http), cuts, (b, c) => {
      http1Target(splitAt(b, c));
    }),
    http1SplitEqualsUnsplit: fc.property(mutated(seeds.http), cuts, (b, c) => {
      // Holds for mutated input too: the stream's output must not depend on how bytes arrive.
      const whole = http1Target([b]);
      const split = http1Target(splitAt(b, c));
      if (whole.join("\n") !== split.join("\n")) throw new Error("split != unsplit");
    }),
    tcpNeverThrows: fc.property(mutated(seeds.tcp, 60), (b) => {
      tcpTarget(b);
    }),
  };
}
