/**
 * What /proc tells about the web servers: their processes, their sockets, their listening ports.
 * Used to fill the BPF process filter, to discover the ports TC watches, and to attribute keep-alive
 * connections that were accepted before the agent started (seeded from /proc/PID/fd + /proc/PID/net/tcp*).
 */
import { formatIPv6 } from "../parse/addr.ts";

export type ServerKind = "nginx" | "apache";

export interface ServerProcess {
  pid: number;
  /** Parent pid: workers of one server share a master. */
  ppid: number;
  server: ServerKind;
  comm: string;
  /** Process start time in clock ticks since boot: with the pid it names a process uniquely. */
  startTicks: number;
}

export interface SocketEntry {
  inode: number;
  local: string;
  localPort: number;
  remote: string;
  remotePort: number;
  /** TCP state as in include/net/tcp_states.h: 1 ESTABLISHED, 10 LISTEN. */
  state: number;
  family: 4 | 6;
}

export interface ProcSocket extends SocketEntry {
  pid: number;
  fd: number;
}

const SERVER_COMMS: Record<string, ServerKind> = { nginx: "nginx", apache2: "apache", httpd: "apache" };

/** Which server a comm names, if any. */
export function serverOfComm(comm: string): ServerKind | undefined {
  return SERVER_COMMS[comm];
}

function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined; // processes come and go between readdir and read
  }
}

/** Parses /proc/PID/stat; the comm field may contain spaces and parentheses. */
export function parseStat(text: string): { pid: number; comm: string; ppid: number; startTicks: number } {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  const rest = text.slice(close + 2).split(" ");
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    ppid: Number(rest[1]),
    startTicks: Number(rest[19]),
  };
}

/** Every running nginx/apache process (master and workers) whose server is in `servers`. */
export function findServerProcesses(servers: readonly ServerKind[], procRoot = "/proc"): ServerProcess[] {
  const out: ServerProcess[] = [];
  for (const e of Deno.readDirSync(procRoot)) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = readText(`${procRoot}/${e.name}/stat`);
    if (!stat) continue;
    const s = parseStat(stat);
    const server = serverOfComm(s.comm);
    if (server && servers.includes(server)) out.push({ ...s, server });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

function hexToIPv4(hex: string): string {
  // /proc prints the address as a host-order (little-endian on x86) u32.
  const n = parseInt(hex, 16);
  return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join(".");
}

function hexToIPv6(hex: string): string {
  const bytes: number[] = [];
  for (let w = 0; w < 4; w++) {
    const word = hex.slice(w * 8, w * 8 + 8);
    for (let b = 3; b >= 0; b--) bytes.push(parseInt(word.slice(b * 2, b * 2 + 2), 16));
  }
  return formatIPv6(bytes, 0, "v4");
}

/** Parses /proc/net/tcp or tcp6 text. */
export function parseNetTcp(text: string, family: 4 | 6): SocketEntry[] {
  const out: SocketEntry[] = [];
  const lines = text.split("\n");
  for (let i = 1; i < lines.length; i++) {
    const f = lines[i].trim().split(/\s+/);
    if (f.length < 10) continue;
    const [la, lp] = f[1].split(":");
    const [ra, rp] = f[2].split(":");
    const conv = family === 4 ? hexToIPv4 : hexToIPv6;
    out.push({
      local: conv(la),
      localPort: parseInt(lp, 16),
      remote: conv(ra),
      remotePort: parseInt(rp, 16),
      state: parseInt(f[3], 16),
      inode: Number(f[9]),
      family,
    });
  }
  return out;
}

/** TCP sockets of the network namespace `pid` lives in, by inode. */
export function tcpSocketsOf(pid: number | "self", procRoot = "/proc"): Map<number, SocketEntry> {
  const m = new Map<number, SocketEntry>();
  for (const [file, fam] of [["tcp", 4], ["tcp6", 6]] as const) {
    const t = readText(`${procRoot}/${pid}/net/${file}`);
    if (t) { for (const s of parseNetTcp(t, fam)) if (s.inode) m.set(s.inode, s); }
  }
  return m;
}

/** fd → socket inode for every socket a process holds. */
export function socketFds(pid: number | "self", procRoot = "/proc"): Map<number, number> {
  const m = new Map<number, number>();
  let entries: Iterable<Deno.DirEntry>;
  try {
    entries = Deno.readDirSync(`${procRoot}/${pid}/fd`);
  } catch {
    return m;
  }
  for (const e of entries) {
    let target: string;
    try {
      target = Deno.readLinkSync(`${procRoot}/${pid}/fd/${e.name}`);
    } catch {
      continue;
    }
    const mm = /^socket:\[(\d+)\]$/.exec(target);
    if (mm) m.set(Number(e.name), Number(mm[1]));
  }
  return m;
}

/** The TCP sockets (with fds) that the given processes hold. */
export function processSockets(pids: readonly number[], procRoot = "/proc"): ProcSocket[] {
  const out: ProcSocket[] = [];
  const tables = new Map<string, Map<number, SocketEntry>>();
  for (const pid of pids) {
    const fds = socketFds(pid, procRoot);
    if (fds.size === 0) continue;
    // Processes in one network namespace share the table: read it once per namespace.
    let ns = "";
    try {
      ns = Deno.readLinkSync(`${procRoot}/${pid}/ns/net`);
    } catch { /* no ns link: read per pid */ }
    const key = ns || `pid:${pid}`;
    let table = tables.get(key);
    if (!table) tables.set(key, table = tcpSocketsOf(pid, procRoot));
    for (const [fd, inode] of fds) {
      const s = table.get(inode);
      if (s) out.push({ ...s, pid, fd });
    }
  }
  return out;
}

/** Ports the processes listen on (TCP LISTEN sockets). */
export function listeningPorts(pids: readonly number[], procRoot = "/proc"): number[] {
  const ports = new Set<number>();
  for (const s of processSockets(pids, procRoot)) if (s.state === 10) ports.add(s.localPort);
  return [...ports].sort((a, b) => a - b);
}
