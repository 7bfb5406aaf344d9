/**
 * Throughput of the offline mode on a big capture: streams/s, MB/s and peak RSS of
 * `ja4ebpf fingerprint --pcap`, run as a child process, and side by side in the same run (same capture, same
 * machine, one after the other) FoxIO's Python tool `ja4.py` (https://github.com/FoxIO-LLC/ja4, directory
 * `python/`; it drives tshark), to report the ratio of their wall times.
 *
 *   deno run -A bench/pcap_throughput.ts --make big.pcap [--streams 100000]
 *       writes a capture of mixed streams: the project's Ethernet/IPv4 fixtures (curl HTTP/1.1 keep-alive,
 *       HTTPS h1 and h2, OpenSSL TLS 1.2, a small-MSS Python client; FoxIO's TLS handshake, SNI, browser,
 *       CONNECT and SOCKS4 captures), tiled with each copy's IPv4 addresses remapped so every copy is its
 *       own set of streams, laid out one after the other in time.
 *   deno run -A bench/pcap_throughput.ts big.pcap [--ja4py PATH/ja4.py] [--runs 3] [--ja4py-runs 1]
 *       measures (median of the runs); the reference tool is found through --ja4py or $JA4PY (skipped, and
 *       said so, without it). It needs tshark (Debian: apt-get install tshark). `--base OTHER/src/main.ts`
 *       also runs another checkout's offline mode, alternating with this one (before/after ratio).
 *   (or record real traffic: bash scripts/gen-capture.sh big.pcap 100000; root, nginx, tcpdump, wrk)
 *
 * Under `deno bench` it measures the in-process pipeline on a FoxIO fixture instead (no big capture needed).
 */
import { openCapture } from "../src/parse/pcap.ts";
import { fingerprintCapture } from "../src/offline/fingerprint_capture.ts";

const MAIN = new URL("../src/main.ts", import.meta.url);
const FIX = new URL("../tests/fixtures/", import.meta.url);

/** Sources of --make and how many copies of each go into one round (the dev captures hold one stream each). */
const SOURCES: [string, number][] = [
  ["local/dev_curl_http_keepalive.pcap", 8],
  ["local/dev_curl_https_h11.pcap", 8],
  ["local/dev_curl_https_h2.pcap", 8],
  ["local/dev_openssl_tls12.pcap", 4],
  ["local/dev_python_small_mss.pcap", 2],
  ["foxio/pcap/tls-handshake.pcapng", 1],
  ["foxio/pcap/tls-sni.pcapng", 1],
  ["foxio/pcap/browsers-x509.pcapng", 1],
  ["foxio/pcap/latest.pcapng", 1],
  ["foxio/pcap/https-connect.pcap", 1],
  ["foxio/pcap/socks4-https.pcap", 1],
];

interface Frame {
  /** Microseconds from the first frame of its source. */
  t: number;
  data: Uint8Array;
}

/** Ethernet frames carrying IPv4 (the copies remap IPv4 addresses); everything else is left out. */
function loadFrames(path: URL): Frame[] {
  const { reader, file } = openCapture(path);
  const out: Frame[] = [];
  let t0 = -1;
  try {
    for (let p = reader.next(); p !== null; p = reader.next()) {
      const d = p.data;
      if (p.linkType !== 1 || d.length < 34 || d[12] !== 0x08 || d[13] !== 0x00 || d[14] >> 4 !== 4) continue;
      const t = p.tsSec * 1e6 + Math.floor(p.tsNsec / 1000);
      if (t0 < 0) t0 = t;
      out.push({ t: t - t0, data: d.slice() });
    }
  } finally {
    file.close();
  }
  return out;
}

/** One's-complement sum of 16-bit words (for the incremental checksum update, RFC 1624). */
function sum16(b: Uint8Array, o: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i += 2) s += (b[o + i] << 8) | b[o + i + 1];
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** Adds (newSum − oldSum) to the checksum at b[o] (one's-complement arithmetic). */
function patchChecksum(b: Uint8Array, o: number, oldSum: number, newSum: number): void {
  const hc = ~((b[o] << 8) | b[o + 1]) & 0xffff;
  const c = ~fold(hc + fold(~oldSum & 0xffff) + fold(newSum)) & 0xffff;
  b[o] = c >> 8;
  b[o + 1] = c & 0xff;
}

/**
 * Copy k of a frame: octets 1 and 2 of both IPv4 addresses XORed with k (a bijection per copy, so the
 * copy's connections keep their shape but no 4-tuple repeats another copy's), checksums patched.
 */
function remap(src: Uint8Array, k: number): Uint8Array {
  const b = src.slice();
  const ip = 14;
  const oldSum = sum16(b, ip + 12, 8);
  for (const a of [ip + 12, ip + 16]) {
    b[a + 1] ^= (k >> 8) & 0xff;
    b[a + 2] ^= k & 0xff;
  }
  const newSum = sum16(b, ip + 12, 8);
  patchChecksum(b, ip + 10, oldSum, newSum);
  const ihl = (b[ip] & 0x0f) * 4;
  const proto = b[ip + 9];
  const l4 = ip + ihl;
  // TCP and UDP checksums cover the addresses through the pseudo-header (a UDP checksum of 0 means none).
  if (proto === 6 && b.length >= l4 + 18) patchChecksum(b, l4 + 16, oldSum, newSum);
  if (proto === 17 && b.length >= l4 + 8 && (b[l4 + 6] | b[l4 + 7]) !== 0) {
    patchChecksum(b, l4 + 6, oldSum, newSum);
  }
  return b;
}

/** Streams one source contributes (as the offline mode counts them). */
function streamsOf(path: URL): number {
  const { reader, file } = openCapture(path);
  try {
    return fingerprintCapture(reader).stats.streams;
  } finally {
    file.close();
  }
}

function make(out: string, want: number): void {
  const sources = SOURCES.map(([rel, copies]) => {
    const url = new URL(rel, FIX);
    return { rel, copies, frames: loadFrames(url), streams: streamsOf(url) };
  });
  const perRound = sources.reduce((n, s) => n + s.copies * s.streams, 0);
  const f = Deno.openSync(out, { write: true, create: true, truncate: true });
  const hdr = new DataView(new ArrayBuffer(24));
  hdr.setUint32(0, 0xa1b2c3d4, true);
  hdr.setUint16(4, 2, true);
  hdr.setUint16(6, 4, true);
  hdr.setUint32(16, 262144, true);
  hdr.setUint32(20, 1, true);
  const chunks: Uint8Array[] = [new Uint8Array(hdr.buffer)];
  let pending = 24;
  const flush = () => {
    const all = new Uint8Array(pending);
    let o = 0;
    for (const c of chunks) all.set(c, (o += c.length) - c.length);
    for (let w = 0; w < all.length;) w += f.writeSync(all.subarray(w));
    chunks.length = 0;
    pending = 0;
  };
  // Capture time starts at a fixed date and advances past each copy, plus 1 ms.
  let clock = Date.UTC(2026, 0, 1) * 1000;
  let k = 0;
  let streams = 0;
  let frames = 0;
  while (streams < want) {
    for (const s of sources) {
      for (let c = 0; c < s.copies; c++) {
        k++;
        let last = 0;
        for (const fr of s.frames) {
          const t = clock + fr.t;
          const data = remap(fr.data, k);
          const rec = new DataView(new ArrayBuffer(16));
          rec.setUint32(0, Math.floor(t / 1e6), true);
          rec.setUint32(4, t % 1e6, true);
          rec.setUint32(8, data.length, true);
          rec.setUint32(12, data.length, true);
          chunks.push(new Uint8Array(rec.buffer), data);
          pending += 16 + data.length;
          last = fr.t;
          frames++;
        }
        clock += last + 1000;
        streams += s.streams;
        if (pending > 8 << 20) flush();
      }
    }
    if (k >= 0xffff) throw new Error("more copies than the address remapping can tell apart");
  }
  flush();
  f.close();
  console.log(JSON.stringify({
    capture: out,
    streams,
    frames,
    copies: k,
    streams_per_round: perRound,
    bytes: Deno.statSync(out).size,
  }));
}

/** Peak resident set (VmHWM, KiB) of a live process; polled because it vanishes with the process. */
function vmHwm(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

interface Run {
  seconds: number;
  stdoutBytes: number;
  lines: number;
  stderr: string;
  peakRssMb: number;
}

/** Runs a command to completion, counting its output; peak RSS of the process itself (not its children). */
async function timed(cmd: string, args: string[]): Promise<Run> {
  const start = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
  }).spawn();
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, vmHwm(child.pid))), 20);
  let lines = 0;
  let bytes = 0;
  const counting = (async () => {
    for await (const chunk of child.stdout) {
      bytes += chunk.length;
      for (const b of chunk) if (b === 10) lines++;
    }
  })();
  const errText = new Response(child.stderr).text();
  const status = await child.status;
  clearInterval(timer);
  await counting;
  const seconds = (performance.now() - start) / 1000;
  const stderr = await errText;
  if (!status.success) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${status.code}: ${stderr.slice(-2000)}`);
  }
  return { seconds, stdoutBytes: bytes, lines, stderr, peakRssMb: peak / 1024 };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function measure(
  capture: string,
  ja4py: string | undefined,
  runs: number,
  refRuns: number,
  baseMain: string | undefined,
): Promise<void> {
  const size = Deno.statSync(capture).size;
  const ours: Run[] = [];
  const theirs: Run[] = [];
  const base: Run[] = [];
  // Alternate the tools so a change in the machine's load hits both alike (the reference tool takes minutes
  // on a big capture: by default it runs once, after our first run).
  for (let i = 0; i < Math.max(runs, refRuns); i++) {
    if (i < runs) {
      ours.push(await timed(Deno.execPath(), ["run", "-A", MAIN.href, "fingerprint", "--pcap", capture]));
    }
    if (baseMain && i < runs) {
      base.push(await timed(Deno.execPath(), ["run", "-A", baseMain, "fingerprint", "--pcap", capture]));
    }
    if (ja4py && i < refRuns) theirs.push(await timed("python3", [ja4py, capture, "-J"]));
  }
  const last = ours[ours.length - 1];
  const streams = Number(/streams=(\d+)/.exec(last.stderr)?.[1] ?? NaN);
  const packets = Number(/packets=(\d+)/.exec(last.stderr)?.[1] ?? NaN);
  const secs = median(ours.map((r) => r.seconds));
  const report: Record<string, unknown> = {
    capture,
    bytes: size,
    packets,
    streams,
    records: last.lines,
    runs,
    seconds: Number(secs.toFixed(3)),
    seconds_all: ours.map((r) => Number(r.seconds.toFixed(3))),
    streams_per_s: Math.round(streams / secs),
    packets_per_s: Math.round(packets / secs),
    mb_per_s: Number((size / 1e6 / secs).toFixed(1)),
    peak_rss_mb: Number(Math.max(...ours.map((r) => r.peakRssMb)).toFixed(1)),
  };
  if (baseMain) {
    const b = median(base.map((r) => r.seconds));
    report.base = baseMain;
    report.base_seconds = Number(b.toFixed(3));
    report.base_seconds_all = base.map((r) => Number(r.seconds.toFixed(3)));
    report.base_streams_per_s = Math.round(streams / b);
    report.base_peak_rss_mb = Number(Math.max(...base.map((r) => r.peakRssMb)).toFixed(1));
    report.speedup_over_base = Number((b / secs).toFixed(2));
  }
  if (ja4py) {
    const ref = median(theirs.map((r) => r.seconds));
    report.ja4py_seconds = Number(ref.toFixed(3));
    report.ja4py_seconds_all = theirs.map((r) => Number(r.seconds.toFixed(3)));
    report.ja4py_streams_per_s = Math.round(streams / ref);
    report.ja4py_mb_per_s = Number((size / 1e6 / ref).toFixed(2));
    report.ja4py_output_bytes = theirs[theirs.length - 1].stdoutBytes;
    report.speedup = Number((ref / secs).toFixed(1));
  } else {
    report.ja4py = "not run: pass --ja4py PATH/ja4.py or set JA4PY (FoxIO's python/ja4.py, needs tshark)";
  }
  console.log(JSON.stringify(report));
}

function flag(name: string): string | undefined {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

if (import.meta.main) {
  const out = flag("--make");
  if (out) {
    make(out, Number(flag("--streams") ?? 100_000));
  } else {
    const capture = Deno.args.find((a, i) => !a.startsWith("--") && !Deno.args[i - 1]?.startsWith("--"));
    if (!capture) {
      console.error(
        "usage: deno run -A bench/pcap_throughput.ts CAPTURE [--ja4py PATH/ja4.py] [--runs N] [--ja4py-runs N]\n" +
          "       deno run -A bench/pcap_throughput.ts --make OUT.pcap [--streams N]",
      );
      Deno.exit(2);
    }
    await measure(
      capture,
      flag("--ja4py") ?? Deno.env.get("JA4PY"),
      Number(flag("--runs") ?? 3),
      Number(flag("--ja4py-runs") ?? 1),
      flag("--base"),
    );
  }
} else {
  const fixture = new URL("../tests/fixtures/foxio/pcap/tls-handshake.pcapng", import.meta.url);
  Deno.bench("tls-handshake.pcapng → records (193 frames, 59 TLS streams)", () => {
    const { reader, file } = openCapture(fixture);
    try {
      fingerprintCapture(reader);
    } finally {
      file.close();
    }
  });
}
