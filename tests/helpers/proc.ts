/**
 * Process plumbing shared by the server/client/capture helpers: finding tools, running commands (optionally
 * inside a network namespace), waiting for ports, walking /proc for children, and killing process trees.
 */

export class HarnessError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HarnessError";
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Absolute path of a tool on PATH or in the sbin dirs (root tools live there), or undefined. */
export function which(cmd: string): string | undefined {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/usr/bin", "/sbin", "/bin"]);
  for (const d of dirs) {
    if (!d) continue;
    try {
      const st = Deno.statSync(`${d}/${cmd}`);
      if (st.isFile && ((st.mode ?? 0o111) & 0o111)) return `${d}/${cmd}`;
    } catch { /* next */ }
  }
  return undefined;
}

/** Like which(), but a missing tool is a clear failure naming the Debian package. */
export function requireTool(cmd: string, pkg: string): string {
  const p = which(cmd);
  if (!p) throw new HarnessError(`${cmd} not found: install Debian's ${pkg} (apt-get install ${pkg})`);
  return p;
}

export function isRoot(): boolean {
  return Deno.uid() === 0;
}

export function requireRoot(what: string): void {
  if (!isRoot()) throw new HarnessError(`${what} needs root (run the tests as root)`);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Run inside this network namespace (`ip netns exec NAME`). */
  netns?: string;
  env?: Record<string, string>;
  stdin?: string | Uint8Array;
  cwd?: string;
  /** Kill the process tree after this long; the result then has code 124 (like timeout(1)). */
  timeoutMs?: number;
}

/** argv with the netns prefix applied. */
export function nsArgv(cmd: string[], netns?: string): string[] {
  return netns ? [requireTool("ip", "iproute2"), "netns", "exec", netns, ...cmd] : cmd;
}

/** Runs a command to completion; never throws for a non-zero exit (the caller looks at code). */
export async function run(cmd: string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = nsArgv(cmd, opts.netns);
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: opts.env,
    cwd: opts.cwd,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin)
      .catch(() => {});
    await w.close().catch(() => {});
  }
  let timedOut = false;
  const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
    timedOut = true;
    killTree(child.pid, "SIGKILL");
  }, opts.timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: timedOut ? 124 : out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** run() that throws with the stderr when the exit code is not 0. */
export async function runOk(cmd: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, opts);
  if (r.code !== 0) {
    throw new HarnessError(
      `${cmd.join(" ")} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-1500)}`,
    );
  }
  return r.stdout;
}

/** True when nothing listens on host:port (we can bind it ourselves). */
export function portFree(port: number, hostname = "127.0.0.1"): boolean {
  try {
    Deno.listen({ hostname, port }).close();
    return true;
  } catch {
    return false;
  }
}

export function requirePortsFree(ports: number[], hostname = "127.0.0.1"): void {
  for (const p of ports) {
    if (!portFree(p, hostname)) {
      throw new HarnessError(`port ${hostname}:${p} is busy: a previous test server still running?`);
    }
  }
}

/**
 * Resolves once a TCP connect to host:port succeeds. `exited` (e.g. child.status) aborts the wait early, and
 * `why()` adds context (a log tail) to the error.
 */
export async function waitForPort(
  hostname: string,
  port: number,
  opts: { timeoutMs?: number; exited?: Promise<unknown>; why?: () => Promise<string> } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let gone = false;
  opts.exited?.then(() => gone = true);
  while (Date.now() < deadline) {
    if (gone) break;
    try {
      const c = await Deno.connect({ hostname, port });
      c.close();
      return;
    } catch { /* not yet */ }
    await delay(50);
  }
  const ctx = opts.why ? await opts.why().catch(() => "") : "";
  throw new HarnessError(
    `${gone ? "server exited before" : "timed out waiting for"} ${hostname}:${port} to accept${
      ctx ? `\n${ctx}` : ""
    }`,
  );
}

interface ProcStat {
  pid: number;
  ppid: number;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // comm may contain spaces and parens: fields restart after the last ')'.
    const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { pid, ppid: Number(rest[1]) };
  } catch {
    return undefined;
  }
}

function allPids(): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (/^\d+$/.test(e.name)) out.push(Number(e.name));
  }
  return out;
}

/** Direct children of pid. */
export function childPids(pid: number): number[] {
  return allPids().map(readStat).filter((s): s is ProcStat => s?.ppid === pid).map((s) => s.pid).sort((
    a,
    b,
  ) => a - b);
}

/** pid and all of its descendants. */
export function processTree(pid: number): number[] {
  const stats = allPids().map(readStat).filter((s): s is ProcStat => s !== undefined);
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    for (const s of stats) if (s.ppid === out[i]) out.push(s.pid);
  }
  return out;
}

/** The process title (/proc/PID/cmdline joined by spaces); "" once gone. */
export function cmdline(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).replaceAll("\0", " ").trim();
  } catch {
    return "";
  }
}

export function alive(pid: number): boolean {
  try {
    // A zombie still has /proc/PID; it is dead for our purposes.
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return s.slice(s.lastIndexOf(")") + 2, s.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Signals pid and every descendant (children first are collected before any dies). */
export function killTree(pid: number, signal: Deno.Signal = "SIGKILL"): void {
  for (const p of processTree(pid).reverse()) {
    try {
      Deno.kill(p, signal);
    } catch { /* gone */ }
  }
}

/**
 * Stops a child: `signal`, then SIGKILL to the whole tree after graceMs; waits for the exit status.
 * Safe to call twice.
 */
export async function stopChild(
  child: Deno.ChildProcess,
  signal: Deno.Signal = "SIGTERM",
  graceMs = 5000,
): Promise<Deno.CommandStatus> {
  const tree = processTree(child.pid);
  try {
    child.kill(signal);
  } catch { /* already gone */ }
  const t = setTimeout(() => {
    for (const p of tree) {
      try {
        Deno.kill(p, "SIGKILL");
      } catch { /* gone */ }
    }
  }, graceMs);
  const st = await child.status;
  clearTimeout(t);
  // Workers orphaned by a crashed master must not keep the port.
  for (const p of tree) {
    if (p !== child.pid && alive(p)) {
      try {
        Deno.kill(p, "SIGKILL");
      } catch { /* gone */ }
    }
  }
  return st;
}

/** Polls cond until true or the deadline; throws with msg (and why()'s context, e.g. a log tail) on timeout. */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  msg: string,
  why?: () => Promise<string>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await delay(50);
  }
  const ctx = why ? await why().catch(() => "") : "";
  throw new HarnessError(`timed out after ${timeoutMs} ms: ${msg}${ctx ? `\n${ctx}` : ""}`);
}

export async function tail(path: string, chars = 2000): Promise<string> {
  const t = await Deno.readTextFile(path).catch(() => "");
  return t.slice(-chars);
}

/** Temp dir readable by unprivileged server workers (makeTempDir gives 0700). */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** A spawned child's stdout (`stdout: "piped"`) line by line: `next()` is the next line, trimmed. */
export function stdoutLines(child: Deno.ChildProcess, what = "child"): {
  next(): Promise<string>;
  cancel(): Promise<void>;
} {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  return {
    async next() {
      while (!buf.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new HarnessError(`${what} exited; output so far: ${buf}`);
        buf += value;
      }
      const i = buf.indexOf("\n");
      const out = buf.slice(0, i);
      buf = buf.slice(i + 1);
      return out.trim();
    },
    cancel: () => reader.cancel().catch(() => {}),
  };
}
