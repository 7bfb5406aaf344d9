/**
 * The whole row pipeline as the agent runs it, minus the kernel: synthetic BPF ring-buffer records (built
 * from layout.gen.ts) → Agent.onRecord (decodeEvent → PacketTracker / RequestTracker → JA4T, JA4, JA4H →
 * Correlator) → Correlator.tick → ClickHouseSink (JSONEachRow → hash → gzip → spool → HTTP insert) → a real
 * clickhouse-server. Goal: ≥ 100k rows/s on one core, RSS ≤ 150 MB at that rate.
 *
 *   deno run -A bench/pipeline_bench.ts [--seconds=15] [--modes=max,10000,50000]
 *
 * Each mode runs in its own child process (so one mode's heap does not inflate the next one's RSS) with the
 * V8 flags the packaged agent uses. Throughput is rows per second of the agent process's CPU time (all its
 * threads: JS, gzip pool, HTTP client), not wall time: the machine may be shared. Per-stage figures are CPU
 * time of the JS thread only (/proc/thread-self/schedstat).
 */
import { Agent } from "../src/agent/agent.ts";
import type { AttachPlan } from "../src/bpf/plan.ts";
import {
  CLOSE_EVENT,
  DATA_EVENT,
  EVENT_HDR,
  EventFlags,
  EventKind,
  Family,
  type FieldLayout,
  Hook,
  PKT_EVENT,
  SYN_EVENT,
} from "../src/bpf/layout.gen.ts";
import { DEFAULT_CONFIG } from "../src/config/config.ts";
import { encodeLineOpen } from "../src/sink/ch_schema.ts";
import { ClickHouseSink } from "../src/sink/clickhouse.ts";
import type { Row } from "../src/sink/row.ts";
import { setLogSink } from "../src/log.ts";
import { startClickHouse } from "../tests/helpers/clickhouse.ts";
import { gzipSync } from "node:zlib";
import process from "node:process";

const GOAL = 100_000;
const V8_FLAGS = "--max-old-space-size=320"; // as scripts/build.sh ships the agent; --v8=… overrides
const REQUESTS_PER_CONN = 4;
const TLS_SHARE = 0.5; // the other half is plain HTTP (its rows wait hold_ms for a hello that never comes)

// ---------------------------------------------------------------------------------------------------------
// Synthetic records, laid out by the generated BPF layout (a layout change moves them too).

const te = new TextEncoder();

function put(dv: DataView, f: FieldLayout, v: number | bigint | Uint8Array): void {
  if (v instanceof Uint8Array) {
    new Uint8Array(dv.buffer, dv.byteOffset).set(v, f.offset);
    return;
  }
  const n = Number(v);
  switch (f.kind) {
    case "u8":
      return dv.setUint8(f.offset, n);
    case "u16":
      return dv.setUint16(f.offset, n, true);
    case "u32":
      return dv.setUint32(f.offset, n, true);
    case "s32":
      return dv.setInt32(f.offset, n, true);
    case "u64":
      return dv.setBigUint64(f.offset, BigInt(v), true);
    default:
      throw new Error(`cannot put ${f.kind}`);
  }
}

const Hd = EVENT_HDR.fields;

function record(
  size: number,
  hdr: Partial<Record<keyof typeof Hd, number | bigint | Uint8Array>>,
  body: [FieldLayout, number | Uint8Array][] = [],
): Uint8Array {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  for (const [k, v] of Object.entries(hdr)) put(dv, Hd[k as keyof typeof Hd], v!);
  for (const [f, v] of body) put(dv, f, v);
  return b;
}

function u16be(n: number): number[] {
  return [n >> 8, n & 255];
}
function vec16(b: number[]): number[] {
  return [...u16be(b.length), ...b];
}

/** A TLS 1.3 ClientHello record as a browser sends it (SNI, groups, ALPN h2/http1.1, versions, sigalgs). */
function clientHello(sni: string): Uint8Array {
  const ext = (type: number, data: number[]) => [...u16be(type), ...vec16(data)];
  const name = [...te.encode(sni)];
  const ciphers = [
    0x1301,
    0x1302,
    0x1303,
    0xc02b,
    0xc02f,
    0xc02c,
    0xc030,
    0xcca9,
    0xcca8,
    0xc013,
    0xc014,
    0x009c,
  ]
    .flatMap(u16be);
  const alpn = [2, ...te.encode("h2"), 8, ...te.encode("http/1.1")];
  const exts = [
    ...ext(0, vec16([0, ...vec16(name)])),
    ...ext(23, []),
    ...ext(65281, [0]),
    ...ext(10, vec16([0x001d, 0x0017, 0x0018].flatMap(u16be))),
    ...ext(11, [1, 0]),
    ...ext(35, []),
    ...ext(16, vec16(alpn)),
    ...ext(5, [1, 0, 0, 0, 0]),
    ...ext(13, vec16([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601].flatMap(u16be))),
    ...ext(51, vec16([...u16be(0x001d), ...vec16(new Array(32).fill(7))])),
    ...ext(45, [1, 1]),
    ...ext(43, [4, ...u16be(0x0304), ...u16be(0x0303)]),
  ];
  const body = [
    3,
    3,
    ...new Array(32).fill(1),
    32,
    ...new Array(32).fill(2),
    ...vec16(ciphers),
    1,
    0,
    ...vec16(exts),
  ];
  const hs = [1, 0, ...u16be(body.length), ...body];
  return Uint8Array.from([0x16, 3, 1, ...u16be(hs.length), ...hs]);
}

const UAS = [
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
  "curl/8.5.0",
];

/** Request heads as browsers send them (~300–600 bytes). */
function heads(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < 16; i++) {
    const ua = UAS[i % UAS.length];
    const lines = [
      `${i % 5 === 4 ? "POST" : "GET"} /shop/items/${1000 + i}?ref=home&page=${i} HTTP/1.1`,
      "Host: www.example.test",
      "Connection: keep-alive",
      `User-Agent: ${ua}`,
      "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
      "Accept-Encoding: gzip, deflate, br",
      "Accept-Language: en-US,en;q=0.9,de;q=0.7",
    ];
    if (i % 2) lines.push(`Cookie: session=${"ab12".repeat(8)}; theme=dark; consent=1`);
    if (i % 3) lines.push("Referer: https://www.example.test/shop/");
    if (i % 5 === 4) lines.push("Content-Type: application/x-www-form-urlencoded", "Content-Length: 0");
    out.push(te.encode(lines.join("\r\n") + "\r\n\r\n"));
  }
  return out;
}

const SYN_OPTS = Uint8Array.from([2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);

/**
 * Generates the events of connection after connection: SYN (TC), first payload (TC: a ClientHello or the
 * start of an HTTP request), REQUESTS_PER_CONN request reads (SSL_read plaintext or recvfrom), close.
 * Each record is a fresh copy of a prebuilt template (as the ring reader hands out copies) with the
 * per-connection fields patched in, so generating costs little next to the pipeline.
 */
export class Traffic {
  readonly heads = heads();
  readonly hello = clientHello("www.example.test");
  conn = 0;
  rows = 0;
  readonly #syn: Uint8Array;
  readonly #pkt: [Uint8Array, Uint8Array];
  /** [tls ? 1 : 0][head index] */
  readonly #data: Uint8Array[][];
  readonly #close: Uint8Array;

  constructor() {
    const hdr = (kind: number, hook: number, flags = 0) => ({
      kind,
      hook,
      family: Family.INET,
      flags,
      comm: te.encode("nginx"),
      daddr: Uint8Array.from([10, 0, 0, 1, ...new Array(12).fill(0)]),
      dport: 443,
    });
    this.#syn = record(SYN_EVENT.size, hdr(EventKind.SYN, Hook.TC), [
      [SYN_EVENT.fields.window, 64240],
      [SYN_EVENT.fields.opt_len, SYN_OPTS.length],
      [SYN_EVENT.fields.options, SYN_OPTS],
    ]);
    const pkt = (first: Uint8Array) => {
      const r = record(PKT_EVENT.fields.data.offset + first.length, {
        ...hdr(EventKind.PKT, Hook.TC),
        data_len: first.length,
        total: first.length,
      });
      r.set(first, PKT_EVENT.fields.data.offset);
      return r;
    };
    this.#pkt = [pkt(this.heads[0].subarray(0, 64)), pkt(this.hello)];
    this.#data = [false, true].map((tls) =>
      this.heads.map((head) => {
        const flags = EventFlags.LAST_CHUNK | (tls ? EventFlags.PLAINTEXT : 0);
        const r = record(DATA_EVENT.fields.data.offset + head.length, {
          ...hdr(EventKind.DATA, tls ? Hook.SSL_READ : Hook.TP_RECVFROM, flags),
          data_len: head.length,
          total: head.length,
        });
        r.set(head, DATA_EVENT.fields.data.offset);
        return r;
      })
    );
    this.#close = record(CLOSE_EVENT.size, hdr(EventKind.CLOSE, Hook.TP_CLOSE));
  }

  /** A copy of a template with this connection's process, socket, time and client address. */
  #rec(tpl: Uint8Array, c: number): [Uint8Array, DataView] {
    const r = tpl.slice();
    const dv = new DataView(r.buffer);
    const pid = 2000 + (c & 1);
    dv.setUint32(Hd.pid.offset, pid, true);
    dv.setUint32(Hd.tid.offset, pid, true);
    dv.setInt32(Hd.fd.offset, 10 + (c % 4096), true);
    dv.setBigUint64(Hd.ts_ns.offset, BigInt(Math.round(performance.now() * 1e6)), true);
    const a = Hd.saddr.offset;
    r[a] = 10;
    r[a + 1] = 1 + (c >> 24 & 63);
    r[a + 2] = c >> 16 & 255;
    r[a + 3] = c >> 8 & 255;
    dv.setUint16(Hd.sport.offset, 1024 + (c & 0x7fff), true);
    return [r, dv];
  }

  /** One whole connection's records; returns how many requests (rows) they carry. */
  connection(out: Uint8Array[]): number {
    const c = this.conn++;
    const tls = (c % 100) < TLS_SHARE * 100;
    const isn = (c * 2654435761) >>> 0;
    const [syn, sdv] = this.#rec(this.#syn, c);
    sdv.setUint32(SYN_EVENT.fields.seq.offset, isn, true);
    out.push(syn);
    const [pkt, pdv] = this.#rec(this.#pkt[tls ? 1 : 0], c);
    pdv.setUint32(PKT_EVENT.fields.seq.offset, (isn + 1) >>> 0, true);
    out.push(pkt);
    let pos = 0;
    for (let k = 0; k < REQUESTS_PER_CONN; k++) {
      const h = (c + k) % this.heads.length;
      const [rec, dv] = this.#rec(this.#data[tls ? 1 : 0][h], c);
      dv.setBigUint64(DATA_EVENT.fields.pos.offset, BigInt(pos), true);
      out.push(rec);
      pos += this.heads[h].length;
    }
    const [close, cdv] = this.#rec(this.#close, c);
    cdv.setBigUint64(CLOSE_EVENT.fields[tls ? "pos_plaintext" : "pos_raw"].offset, BigInt(pos), true);
    out.push(close);
    this.rows += REQUESTS_PER_CONN;
    return REQUESTS_PER_CONN;
  }
}

// ---------------------------------------------------------------------------------------------------------
// One mode, in a child process.

/** CPU ns of the calling (JS) thread. */
function threadNs(): number {
  return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]);
}

function processCpuS(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface ModeResult {
  mode: string;
  rate: number | null;
  seconds: number;
  generated: number;
  /** Rows per wall second actually offered (below `rate` when the machine withheld the CPU). */
  offeredRate: number;
  emitted: number;
  landed: number;
  dropped: Record<string, number>;
  /** Process CPU seconds (all threads) from start to drained, minus the record generator's. */
  cpuS: number;
  wallS: number;
  rowsPerCpuS: number;
  rssStartMiB: number;
  rssPeakMiB: number;
  rssMedianMiB: number;
  heapPeakMiB: number;
  stagesNsPerRow: Record<string, number>;
  threads: Record<string, number>;
  correlator: { held_peak: number; released_timeout: number; released_overflow: number };
  drained: boolean;
}

function threadCpu(): Record<string, number> {
  const out: Record<string, number> = {};
  const tick = 100; // USER_HZ
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const s = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const comm = s.slice(s.indexOf("(") + 1, s.lastIndexOf(")")).replace(/[-_ ]?\d+$/, "");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      const cpu = (Number(f[11]) + Number(f[12])) / tick;
      out[comm] = Math.round(((out[comm] ?? 0) + cpu) * 100) / 100;
    } catch { /* thread ended */ }
  }
  return out;
}

async function runMode(url: string, mode: string, seconds: number): Promise<ModeResult> {
  const rate = mode === "max" ? null : Number(mode);
  const table = `bench_${mode}`;
  const spool = await Deno.makeTempDir({ prefix: "ja4ebpf-bench-" });
  setLogSink(() => {});
  const cfg = structuredClone(DEFAULT_CONFIG);
  const sink = await ClickHouseSink.open({
    config: { ...cfg.output.clickhouse, url, table, spool_dir: spool },
  });
  const agent = new Agent(cfg, { rowHook: () => {} });
  // Agent.start() would plan real hooks; the dispatch only needs to know which method nginx uses.
  agent.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
  const traffic = new Traffic();
  // generate is the bench's own work (building records): subtracted from the agent's CPU time.
  const stage = { generate: 0, decode_correlate: 0, tick: 0, sink_write: 0 };
  let emitted = 0;
  let heldPeak = 0;

  const pump = () => {
    let t = threadNs();
    const rows = agent.correlator.tick(Date.now());
    const t2 = threadNs();
    stage.tick += t2 - t;
    heldPeak = Math.max(heldPeak, agent.correlator.stats().held);
    if (rows.length) {
      emitted += rows.length;
      sink.write(rows as Row[]);
      t = threadNs();
      stage.sink_write += t - t2;
    }
  };
  const feed = (n: number) => {
    const recs: Uint8Array[] = [];
    let rows = 0;
    const t0 = threadNs();
    while (rows < n) rows += traffic.connection(recs);
    const t = threadNs();
    stage.generate += t - t0;
    for (const r of recs) agent.onRecord(r);
    stage.decode_correlate += threadNs() - t;
  };

  // Warm-up (JIT, connect, table creation) outside the measurement.
  for (let i = 0; i < 20; i++) feed(1000);
  await new Promise((r) => setTimeout(r, 2500));
  pump();
  if (!(await sink.drain(60_000))) throw new Error("warm-up did not drain: is clickhouse-server up?");
  const base = await countRows(url, table);
  traffic.rows = 0;
  emitted = 0;
  heldPeak = 0;
  for (const k of Object.keys(stage) as (keyof typeof stage)[]) stage[k] = 0;
  const threads0 = threadCpu();

  const rss: number[] = [];
  let heapPeak = 0;
  const sampler = setInterval(() => {
    const m = Deno.memoryUsage();
    rss.push(m.rss);
    heapPeak = Math.max(heapPeak, m.heapTotal);
    if (Deno.env.get("BENCH_TRACE") && rss.length % 10 === 0) {
      const cs = agent.correlator.stats();
      console.error(
        `t=${rss.length / 5}s rss=${m.rss >> 20} heapUsed=${m.heapUsed >> 20} rows=${traffic.rows} ` +
          `held=${cs.held} conns=${cs.connections} flows=${agent.packets.stats().flows} ` +
          `sink=${
            JSON.stringify({ b: sink.stats().buffered, s: sink.stats().spooled, d: sink.stats().dropped })
          }`,
      );
    }
  }, 200);
  const rssStart = Deno.memoryUsage().rss;
  const cpu0 = processCpuS();
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let lastPump = t0;
  let budget = 0;
  let prev = t0;
  while (performance.now() < end) {
    const now = performance.now();
    if (rate === null) feed(2000);
    else {
      // No catch-up bursts: when the machine withholds the CPU, the offered rate falls behind (reported as
      // the achieved rate) instead of arriving later as one huge burst that would measure the burst.
      budget += rate * Math.min(now - prev, 20) / 1000;
      const before = traffic.rows;
      if (budget >= 1) feed(Math.floor(budget));
      budget -= traffic.rows - before;
    }
    // The agent ticks the correlator every 100 ms.
    if (now - lastPump >= 100) {
      pump();
      lastPump = now;
    }
    prev = now;
    await new Promise((r) => setTimeout(r, rate === null ? 0 : 10));
  }
  const offeredS = (performance.now() - t0) / 1000;
  // Close out: release what the correlator holds, then wait for ClickHouse to acknowledge everything.
  const rest = agent.correlator.flush();
  emitted += rest.length;
  sink.write(rest);
  const drained = await sink.drain(180_000);
  const cpuS = processCpuS() - cpu0 - stage.generate / 1e9;
  const wallS = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const st = sink.stats();
  await sink.close();
  const landed = (await countRows(url, table)) - base;
  const threads1 = threadCpu();
  const threads: Record<string, number> = {};
  for (const [k, v] of Object.entries(threads1)) {
    threads[k] = Math.round((v - (threads0[k] ?? 0)) * 100) / 100;
  }
  await Deno.remove(spool, { recursive: true }).catch(() => {});
  const sorted = [...rss].sort((a, b) => a - b);
  const cs = agent.correlator.stats();
  const mib = (b: number) => Math.round(b / 2 ** 20);
  return {
    mode,
    rate,
    seconds,
    generated: traffic.rows,
    offeredRate: Math.round(traffic.rows / offeredS),
    emitted,
    landed,
    dropped: st.dropped,
    cpuS: Math.round(cpuS * 100) / 100,
    wallS: Math.round(wallS * 10) / 10,
    rowsPerCpuS: Math.round(landed / cpuS),
    rssStartMiB: mib(rssStart),
    rssPeakMiB: mib(sorted.at(-1) ?? rssStart),
    rssMedianMiB: mib(sorted[sorted.length >> 1] ?? rssStart),
    heapPeakMiB: mib(heapPeak),
    stagesNsPerRow: Object.fromEntries(
      Object.entries(stage).map(([k, v]) => [k, Math.round(v / Math.max(1, traffic.rows))]),
    ),
    threads,
    correlator: {
      held_peak: heldPeak,
      released_timeout: cs.rows_released_timeout,
      released_overflow: cs.rows_released_overflow,
    },
    drained,
  };
}

async function countRows(url: string, table: string): Promise<number> {
  const r = await fetch(`${url}/?query=${encodeURIComponent(`SELECT count() FROM ja4ebpf.${table}`)}`);
  const t = await r.text();
  return r.ok ? Number(t.trim()) : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Serialization variants, side by side (JS-thread CPU per row; compressed share of the JSON).

function formats(rows: Row[]): string[] {
  const lines = rows.map((r) => encodeLineOpen(r, "legacy") + `,"batch_id":"${"0".repeat(32)}"}`);
  const body = te.encode(lines.join("\n") + "\n");
  const out = [`${rows.length} rows, JSONEachRow ${Math.round(body.length / rows.length)} B/row`];
  for (const level of [0, 1, 6]) {
    const t = threadNs();
    let z: Uint8Array = body;
    for (let i = 0; i < 3; i++) z = level ? gzipSync(body, { level }) : body;
    const ns = (threadNs() - t) / 3 / rows.length;
    out.push(
      level
        ? `gzip -${level}: ${(z.length / body.length).toFixed(3)} of the JSON, ${Math.round(ns)} ns/row`
        : "no compression: 1.000 of the JSON, 0 ns/row",
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const arg = (k: string, d: string) =>
    Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
  if (Deno.args[0] === "--child") {
    const r = await runMode(Deno.args[1], Deno.args[2], Number(Deno.args[3]));
    console.log(JSON.stringify(r));
    Deno.exit(0);
  }
  const seconds = Number(arg("seconds", "15"));
  const modes = arg("modes", "max,10000,50000").split(",");
  const v8 = arg("v8", V8_FLAGS);
  const ch = await startClickHouse();
  try {
    const load = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
    console.log(`load average before: ${load}; ${navigator.hardwareConcurrency} CPUs; V8 flags ${v8}`);
    const results: ModeResult[] = [];
    for (const mode of modes) {
      const p = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `--v8-flags=${v8}`,
          new URL(import.meta.url).pathname,
          "--child",
          ch.url,
          mode,
          String(seconds),
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const o = await p.output();
      const out = new TextDecoder().decode(o.stdout).trim().split("\n").at(-1) ?? "";
      if (!o.success || !out.startsWith("{")) {
        console.log(`${mode}: the child failed (exit ${o.code}${o.signal ? ", " + o.signal : ""})`);
        continue;
      }
      const r = JSON.parse(out) as ModeResult;
      results.push(r);
      const label = r.rate === null ? "unpaced" : `paced ${r.rate / 1000}k/s`;
      console.log(
        `${label.padEnd(12)} offered ${r.offeredRate} rows/s; ${r.landed} rows landed of ${r.generated} in ` +
          `${r.wallS} s wall, ` +
          `${r.cpuS} s CPU → ${r.rowsPerCpuS} rows per CPU-second (${
            (r.rowsPerCpuS / GOAL).toFixed(2)
          }× goal); ` +
          `RSS start ${r.rssStartMiB} / median ${r.rssMedianMiB} / peak ${r.rssPeakMiB} MiB ` +
          `(V8 heap peak ${r.heapPeakMiB}); dropped ${JSON.stringify(r.dropped)}${
            r.drained ? "" : " [not drained]"
          }`,
      );
      console.log(
        `${"".padEnd(12)} JS thread ns/row ${JSON.stringify(r.stagesNsPerRow)}; thread CPU s ` +
          `${JSON.stringify(r.threads)}; correlator ${JSON.stringify(r.correlator)}`,
      );
    }
    const { testRow } = await import("../tests/helpers/rows.ts");
    for (const l of formats(Array.from({ length: 20_000 }, (_, i) => testRow(i, "fmt")))) console.log(l);
    console.log(
      `load average after: ${Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ")}`,
    );
  } finally {
    await ch.close();
  }
}
