/**
 * tcpdump for a test: packet-buffered (-U), full packets (-s 0), started only once it really captures
 * ("listening on" on stderr), stopped with SIGINT so the pcap is complete.
 */
import {
  delay,
  HarnessError,
  makeTempDir,
  nsArgv,
  requireRoot,
  requireTool,
  runOk,
  stopChild,
} from "./proc.ts";
import type { NsRef } from "./clients.ts";

export interface TcpdumpOptions {
  /** Interface: "lo" or a veth end (Netns.hostIf in the root namespace). */
  iface: string;
  /** pcap filter, e.g. "tcp port 20443"; default everything. */
  filter?: string;
  /** Output file; default capture.pcap in a temp dir removed by close(). */
  file?: string;
  /** Capture inside this namespace (e.g. on Netns.nsIf). */
  netns?: NsRef;
  /** Milliseconds to wait for "listening on"; default 10000. */
  startTimeoutMs?: number;
  /** Kernel capture buffer in KiB (`-B`); default tcpdump's (2 MiB). Larger: fewer drops on a busy host. */
  bufferKiB?: number;
}

export interface CaptureStats {
  captured: number;
  receivedByFilter: number;
  droppedByKernel: number;
}

export interface Tcpdump extends AsyncDisposable {
  file: string;
  /**
   * Waits until the pcap stops growing (~300 ms quiet, at most 4 s), then SIGINT and waits for the exit;
   * returns the pcap path. Safe to call twice.
   */
  stop(): Promise<string>;
  /** tcpdump's own counters, known after stop(). */
  stats?: CaptureStats;
  /** stop() and remove the temp dir when the file was ours. */
  close(): Promise<void>;
}

export async function startTcpdump(opts: TcpdumpOptions): Promise<Tcpdump> {
  requireRoot("tcpdump");
  const bin = requireTool("tcpdump", "tcpdump");
  if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.iface)) throw new HarnessError(`bad interface ${opts.iface}`);
  const ownDir = opts.file === undefined ? await makeTempDir("ja4ebpf-pcap-") : undefined;
  const file = opts.file ?? `${ownDir}/capture.pcap`;
  const ns = opts.netns === undefined
    ? undefined
    : typeof opts.netns === "string"
    ? opts.netns
    : opts.netns.name;
  // -Z root: tcpdump would otherwise drop to its own user and fail to write into root's temp dirs.
  const argv = nsArgv([
    bin,
    "-i",
    opts.iface,
    "-n",
    "-s",
    "0",
    "-U",
    "--immediate-mode",
    ...(opts.bufferKiB ? ["-B", String(opts.bufferKiB)] : []),
    "-Z",
    "root",
    "-w",
    file,
    ...(opts.filter ? [opts.filter] : []),
  ], ns);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  })
    .spawn();
  let stderr = "";
  let listening = () => {};
  const ready = new Promise<void>((r) => listening = r);
  // Keep draining stderr for the whole run (a full pipe would block tcpdump) and keep it for the stats.
  const drained = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      stderr += dec.decode(chunk, { stream: true });
      if (stderr.includes("listening on")) listening();
    }
  })().catch(() => {});
  const cleanup = async () => {
    if (ownDir) await Deno.remove(ownDir, { recursive: true }).catch(() => {});
  };
  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    ready.then(() => "ok" as const),
    child.status.then(() => "exited" as const),
    new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs)),
  ]);
  clearTimeout(timer);
  if (outcome !== "ok") {
    await stopChild(child, "SIGKILL", 1000);
    await drained;
    await cleanup();
    throw new HarnessError(
      `tcpdump ${outcome === "exited" ? "exited" : `not capturing after ${timeoutMs} ms`}: ${stderr.trim()}`,
    );
  }
  let stopped: Promise<string> | undefined;
  const cap: Tcpdump = {
    file,
    stop() {
      stopped ??= (async () => {
        // SIGINT ends tcpdump's loop without draining what the kernel still queues for it: wait until the
        // file (written per packet with -U) stops growing for a moment first.
        let size = -1;
        for (let quiet = 0, i = 0; quiet < 3 && i < 40; i++) {
          await delay(100);
          const now = await Deno.stat(file).then((st) => st.size, () => 0);
          quiet = now === size ? quiet + 1 : 0;
          size = now;
        }
        await stopChild(child, "SIGINT", 5000);
        await drained;
        const n = (re: RegExp) => Number(re.exec(stderr)?.[1] ?? NaN);
        cap.stats = {
          captured: n(/(\d+) packets? captured/),
          receivedByFilter: n(/(\d+) packets? received by filter/),
          droppedByKernel: n(/(\d+) packets? dropped by kernel/),
        };
        return file;
      })();
      return stopped;
    },
    async close() {
      await cap.stop();
      await cleanup();
    },
    [Symbol.asyncDispose]: () => cap.close(),
  };
  return cap;
}

/**
 * Fields of the packets matching a display filter, read with tshark: one array per packet, one string per
 * field ("" when absent; several occurrences joined with ","). `options` are tshark -o settings, e.g.
 * ["tls.keylog_file:KEYS"] to decrypt TLS.
 */
export async function tsharkFields(
  pcap: string,
  displayFilter: string,
  fields: string[],
  options: string[] = [],
): Promise<string[][]> {
  const tshark = requireTool("tshark", "tshark");
  const out = await runOk([
    tshark,
    "-n",
    "-r",
    pcap,
    ...options.flatMap((o) => ["-o", o]),
    ...(displayFilter ? ["-Y", displayFilter] : []),
    "-T",
    "fields",
    "-E",
    "occurrence=a",
    "-E",
    "aggregator=,",
    ...fields.flatMap((f) => ["-e", f]),
  ], { timeoutMs: 60_000 });
  return out.split("\n").filter((l) => l !== "").map((l) => l.split("\t"));
}
