/**
 * Throughput of the offline mode on a big capture: streams/s, packets/s and peak RSS of
 * `ja4ebpf fingerprint --pcap`, run as a child process.
 *   bash scripts/gen-capture.sh big.pcap 20000     (root: nginx + tcpdump + wrk on loopback)
 *   deno run -A bench/pcap_throughput.ts big.pcap
 * Under `deno bench` it measures the in-process pipeline on a FoxIO fixture instead (no big capture needed).
 */
import { openCapture } from "../src/parse/pcap.ts";
import { fingerprintCapture } from "../src/offline/fingerprint_capture.ts";

const MAIN = new URL("../src/main.ts", import.meta.url);

/** Peak resident set (VmHWM, KiB) of a live process; polled because it vanishes with the process. */
function vmHwm(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

async function measure(capture: string): Promise<void> {
  const start = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN.href, "fingerprint", "--pcap", capture],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
  }).spawn();
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, vmHwm(child.pid))), 20);
  let lines = 0;
  const counting = (async () => {
    for await (const chunk of child.stdout) for (const b of chunk) if (b === 10) lines++;
  })();
  const errText = new Response(child.stderr).text();
  const status = await child.status;
  clearInterval(timer);
  await counting;
  const secs = (performance.now() - start) / 1000;
  const stderr = await errText;
  if (!status.success) throw new Error(`fingerprint exited ${status.code}: ${stderr}`);
  const streams = Number(/streams=(\d+)/.exec(stderr)?.[1] ?? NaN);
  const packets = Number(/packets=(\d+)/.exec(stderr)?.[1] ?? NaN);
  const size = Deno.statSync(capture).size;
  console.log(JSON.stringify({
    capture,
    bytes: size,
    packets,
    streams,
    records: lines,
    seconds: Number(secs.toFixed(2)),
    streams_per_s: Math.round(streams / secs),
    packets_per_s: Math.round(packets / secs),
    mb_per_s: Number((size / 1e6 / secs).toFixed(1)),
    peak_rss_mb: Number((peak / 1024).toFixed(1)),
  }));
}

if (import.meta.main) {
  const capture = Deno.args[0];
  if (!capture) {
    console.error(
      "usage: deno run -A bench/pcap_throughput.ts CAPTURE (make one with scripts/gen-capture.sh)",
    );
    Deno.exit(2);
  }
  await measure(capture);
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
