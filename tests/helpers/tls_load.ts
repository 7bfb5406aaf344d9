/**
 * HTTPS probe accounting for tests and benchmarks: the agent's per-process probe hit counter (BPF map
 * `ssl_hits`, tgid → entry + return program runs = breakpoint traps), whether a process carries the uprobe
 * out-of-line area, and Python TLS clients (a load of new connections with unique paths; a keep-alive loop).
 */
import { requireTool, runOk } from "./proc.ts";

/** The ids of the BPF maps the process holds open, by map name (from /proc/PID/fdinfo + bpftool). */
function mapIdsOf(pid: number): number[] {
  const ids = new Set<number>();
  for (const e of Deno.readDirSync(`/proc/${pid}/fdinfo`)) {
    try {
      const m = /^map_id:\s*(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${e.name}`));
      if (m) ids.add(Number(m[1]));
    } catch { /* closed meanwhile */ }
  }
  return [...ids];
}

/** tgid → probe hits (traps) counted by the agent `agentPid` so far. */
export async function sslHits(agentPid: number): Promise<Map<number, number>> {
  const bpftool = requireTool("bpftool", "bpftool");
  for (const id of mapIdsOf(agentPid)) {
    const info = JSON.parse(await runOk([bpftool, "-j", "map", "show", "id", String(id)])) as {
      name?: string;
    };
    if (info.name !== "ssl_hits") continue;
    const dump = JSON.parse(await runOk([bpftool, "-j", "map", "dump", "id", String(id)])) as {
      key: unknown;
      value: unknown;
      formatted?: { key: number; value: number };
    }[];
    const out = new Map<number, number>();
    for (const e of dump) {
      if (e.formatted) out.set(Number(e.formatted.key), Number(e.formatted.value));
      else if (typeof e.key === "number") out.set(e.key, Number(e.value));
      else out.set(leNum(e.key as string[]), leNum(e.value as string[]));
    }
    return out;
  }
  throw new Error(`agent ${agentPid} holds no ssl_hits map`);
}

const leNum = (bytes: string[]) => bytes.reduceRight((n, b) => n * 256 + parseInt(b, 16), 0);

/** Sum of hits over the given processes. */
export function hitsOf(hits: Map<number, number>, pids: Iterable<number>): number {
  let n = 0;
  for (const p of pids) n += hits.get(p) ?? 0;
  return n;
}

/** The process has the uprobe out-of-line page (`[uprobes]`): it has hit a breakpoint since it started. */
export function hasUprobesArea(pid: number): boolean {
  return Deno.readTextFileSync(`/proc/${pid}/maps`).includes("[uprobes]");
}

const LOAD_PY = `
import http.client, json, os, ssl, sys, threading, time
a = json.loads(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
done = []
errors = []
lock = threading.Lock()
seq = [0]
def worker():
    while not os.path.exists(a["stop"]):
        with lock:
            seq[0] += 1
            i = seq[0]
        path = "%s/%d" % (a["prefix"], i)
        try:
            c = http.client.HTTPSConnection("127.0.0.1", a["port"], context=ctx, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            with lock:
                done.append(path)
        except Exception as e:
            with lock:
                errors.append("%s %s" % (path, e))
        time.sleep(a["pause"])
ts = [threading.Thread(target=worker) for _ in range(a["threads"])]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"done": done, "errors": errors}))
`;

export interface TlsLoad {
  /** Stops the load; resolves with the paths answered and the failures. */
  stop(): Promise<{ done: string[]; errors: string[] }>;
}

/** New-connection HTTPS GETs of `${prefix}/N` (unique N) from `threads` threads until stop(). */
export function startTlsLoad(
  port: number,
  prefix: string,
  dir: string,
  threads = 3,
  pauseSec = 0.01,
): TlsLoad {
  const stopFile = `${dir}/stop-${prefix.replace(/\W/g, "_")}`;
  const out = runOk([
    requireTool("python3", "python3"),
    "-c",
    LOAD_PY,
    JSON.stringify({ port, prefix, threads, pause: pauseSec, stop: stopFile }),
  ], { timeoutMs: 600_000 });
  return {
    async stop() {
      await Deno.writeTextFile(stopFile, "");
      return JSON.parse(await out);
    },
  };
}

/**
 * The bystander: a Python TLS client doing `requests` GETs on one keep-alive connection to `port`, then
 * reporting its own pid and whether it carries the `[uprobes]` area (it checks before exiting).
 */
export const BYSTANDER_PY = `
import http.client, json, os, ssl, sys, time, resource
a = json.loads(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
c = http.client.HTTPSConnection("127.0.0.1", a["port"], context=ctx, timeout=10)
t0 = resource.getrusage(resource.RUSAGE_SELF)
port = None
conns = 0
for i in range(a["requests"]):
    c.request("GET", a["path"])
    if c.sock is not None and c.sock.getsockname()[1] != port:
        port = c.sock.getsockname()[1]
        conns += 1
    c.getresponse().read()
t1 = resource.getrusage(resource.RUSAGE_SELF)
maps = open("/proc/self/maps").read()
print(json.dumps({"pid": os.getpid(), "port": port, "connections": conns, "uprobes_area": "[uprobes]" in maps,
    "user_s": t1.ru_utime - t0.ru_utime, "sys_s": t1.ru_stime - t0.ru_stime}))
if a.get("hold"):
    time.sleep(a["hold"])
`;

export interface BystanderResult {
  pid: number;
  /** Local port of the (last) connection. */
  port: number;
  /** Connections used: 1 unless the server closed the keep-alive connection (e.g. nginx keepalive_requests). */
  connections: number;
  uprobes_area: boolean;
  user_s: number;
  sys_s: number;
}

export async function bystander(port: number, requests: number, path = "/"): Promise<BystanderResult> {
  const out = await runOk([
    requireTool("python3", "python3"),
    "-c",
    BYSTANDER_PY,
    JSON.stringify({ port, requests, path }),
  ], { timeoutMs: 300_000 });
  return JSON.parse(out);
}

/**
 * A TLS server no agent follows (Python's http.server over ssl, HTTP/1.1 keep-alive), for the bystander.
 * Resolves once it listens.
 */
export async function startBystanderServer(
  port: number,
  certFile: string,
  keyFile: string,
): Promise<AsyncDisposable & { pid: number }> {
  const py = `
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("listening", flush=True)
s.serve_forever()
`;
  const child = new Deno.Command(requireTool("python3", "python3"), {
    args: ["-c", py, String(port), certFile, keyFile],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = await Promise.race([
    reader.read(),
    new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000)),
  ]);
  if (!first || first.done) {
    child.kill("SIGKILL");
    await child.status;
    throw new Error("bystander TLS server did not start");
  }
  reader.releaseLock();
  return {
    pid: child.pid,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await child.status;
      await child.stdout.cancel().catch(() => {});
    },
  };
}
