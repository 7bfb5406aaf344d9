/**
 * Following the web servers: which processes are nginx/Apache (into the BPF process filter) and which ports
 * they listen on (into the tc port filter). Kept out of the agent, which only schedules it: the full /proc scan
 * once a second, and a look at the traced processes' children on every tick (new workers after a reload read
 * requests at once). Where the kernel follows forks and execs itself (the "follow" hook), the scan only
 * confirms and cleans up, every FULL_SCAN_MS; the seconds in between read the kernel's map back.
 */
import type { ListenPorts, TracedPids } from "../bpf/maps.ts";
import { ServerKind } from "../bpf/layout.gen.ts";
import { findServerProcesses, listeningPorts, type ServerKind as Server, serverOfComm } from "./procfs.ts";

/** Listening ports are read again at least this often when the servers' processes did not change. */
export const PORT_RESCAN_MS = 30_000;
/**
 * Where the kernel follows forks, execs and exits, the full /proc scan (a few ms a second with a few hundred
 * processes: one open and read per process) is only a safety net, run this often; in between the kernel's map
 * is the truth.
 */
export const FULL_SCAN_MS = 30_000;

/** The process has exited (no /proc entry, or a zombie / dead task waiting to be reaped). */
function procGone(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state === "Z" || state === "X";
  } catch {
    return true;
  }
}

const kindOf = (server: Server) => server === "nginx" ? ServerKind.NGINX : ServerKind.APACHE;
const serverOfKind = (kind: number): Server | undefined =>
  kind === ServerKind.NGINX ? "nginx" : kind === ServerKind.APACHE ? "apache" : undefined;
/** The traced pids in order: a set compared across refreshes whatever order the map iterates in. */
const pidList = (m: Map<number, Server>) => [...m.keys()].sort((a, b) => a - b).join(",");

export class ServerFollower {
  /** tgid → server, as written into the BPF process filter. */
  traced = new Map<number, Server>();
  /** Ports in the tc filter. */
  readonly ports = new Set<number>();
  /** The kernel follows forks/execs/exits of servers into traced_pids (plan hook "follow"). */
  followActive = false;
  #portScanPids = "";
  #portScanMs = 0;
  #fullScanMs = -Infinity;

  constructor(
    private readonly servers: readonly Server[],
    /** capture.ports: fixed ports, or [] to follow what the servers listen on. */
    private readonly fixedPorts: readonly number[],
  ) {}

  /**
   * Server processes into `pids`, their listening ports into `lp`: the full /proc scan, or where the kernel
   * follows the servers (and the last full scan is recent) the kernel's map read back. True when the set of
   * traced processes changed.
   */
  refresh(pids: TracedPids | undefined, lp: ListenPorts | undefined, nowMs = Date.now()): boolean {
    const before = pidList(this.traced);
    if (this.followActive && pids && nowMs - this.#fullScanMs < FULL_SCAN_MS) {
      const traced = new Map<number, Server>();
      for (const [pid, kind] of pids.entries()) {
        const server = serverOfKind(kind);
        if (server) traced.set(pid, server);
      }
      this.traced = traced;
    } else {
      this.#fullScanMs = nowMs;
      this.#scan(pids);
    }
    const after = pidList(this.traced);
    this.#ports(lp, after, nowMs);
    return after !== before;
  }

  /** The full scan: server processes into `pids` (the map is the truth). */
  #scan(pids: TracedPids | undefined): void {
    const now = new Map(findServerProcesses(this.servers).map((p) => [p.pid, p.server] as const));
    // The follow programs add forked/exec'd servers and remove exited ones in the kernel: read the map whole
    // first, then change what differs.
    const inMap = pids?.entries() ?? new Map<number, number>();
    const traced = new Map<number, Server>();
    for (const [pid, server] of now) {
      if (pids && inMap.get(pid) !== kindOf(server)) {
        // A zombie the exit program already removed must not come back (its pid may be reused).
        if (inMap.has(pid) || !procGone(pid)) pids.set(pid, kindOf(server));
        else continue;
      }
      traced.set(pid, server);
    }
    for (const [pid, kind] of inMap) {
      if (now.has(pid)) continue;
      if (this.followActive && !procGone(pid)) {
        // Added by the kernel side and still running (a forked worker that renamed itself): keep it.
        const server = serverOfKind(kind);
        if (server) traced.set(pid, server);
        continue;
      }
      pids?.delete(pid);
    }
    this.traced = traced;
  }

  /** The listening ports of the traced processes (`pidKey`: pidList of them) or the fixed ones into `lp`. */
  #ports(lp: ListenPorts | undefined, pidKey: string, nowMs: number): void {
    // Listening ports come from /proc/PID/net/tcp, which also lists every TIME_WAIT connection: tens of
    // thousands of lines on a server closing 10k connections a second. Read it when the servers' processes
    // changed, else every PORT_RESCAN_MS, not every second.
    const rescan = pidKey !== this.#portScanPids || nowMs - this.#portScanMs >= PORT_RESCAN_MS;
    if (!this.fixedPorts.length && !rescan) return;
    this.#portScanPids = pidKey;
    this.#portScanMs = nowMs;
    const ports = this.fixedPorts.length ? this.fixedPorts : listeningPorts([...this.traced.keys()]);
    for (const p of ports) {
      if (this.ports.has(p)) continue;
      lp?.add(p);
      this.ports.add(p);
    }
    if (!this.fixedPorts.length) {
      for (const p of [...this.ports]) {
        if (ports.includes(p)) continue;
        lp?.delete(p);
        this.ports.delete(p);
      }
    }
  }

  /**
   * Workers forked by a traced master (nginx reload, Apache replacing children) read requests at once; the
   * full scan runs only once a second, so look at the masters' children on every tick (cheap: one file per
   * traced process) to shrink the window in which their reads are filtered out.
   */
  followChildren(pids: TracedPids | undefined): void {
    if (this.followActive) return; // the kernel adds them at fork
    for (const [pid, server] of [...this.traced]) {
      let text: string;
      try {
        text = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`);
      } catch {
        continue; // gone, or a kernel without CONFIG_PROC_CHILDREN: the slow scan covers it
      }
      for (const c of text.split(" ")) {
        const child = Number(c);
        if (!child || this.traced.has(child)) continue;
        let comm = "";
        try {
          comm = Deno.readTextFileSync(`/proc/${child}/comm`).trim();
        } catch { /* exited */ }
        if (serverOfComm(comm) !== server) continue;
        pids?.set(child, kindOf(server));
        this.traced.set(child, server);
      }
    }
  }
}
