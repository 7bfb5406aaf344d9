/**
 * Server processes the agent has not scanned yet, and tc filters after ours:
 *  - the follow programs (both variants) keep traced_pids current in the kernel: a server exec'd is added,
 *    a process forked by a traced one inherits its kind (threads do not), an exec into another binary and
 *    the exit of the last thread remove the tgid;
 *  - the running agent turns every request into a row when nginx / Apache start after it and are sent
 *    requests at once, during and right after an nginx reload and an Apache graceful restart;
 *  - tc_ingress lets the classifier chain go on: a filter with a later priority on the same hook sees the
 *    packets, and they still reach the server.
 * Needs root, nginx, apache2, python3, tc, ip and ethtool. Ports 29080 (nginx) and 29081 (Apache).
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import { BpfObject, u32Key } from "../../src/bpf/object.ts";
import { embeddedObject } from "../../src/bpf/embedded.ts";
import { tracedKind } from "../../src/bpf/maps.ts";
import { ServerKind } from "../../src/bpf/layout.gen.ts";
import type { Row } from "../../src/sink/row.ts";
import { keptSyns, TestLoader } from "../helpers/bpf.ts";
import { startAgent } from "../helpers/agent.ts";
import { startApache, startNginx, type WebServer } from "../helpers/servers.ts";
import { curl, httpRequest, rawHttp } from "../helpers/clients.ts";
import { createNetns } from "../helpers/netns.ts";
import {
  alive,
  delay,
  HarnessError,
  requireRoot,
  requireTool,
  stdoutLines,
  waitUntil,
} from "../helpers/proc.ts";

const NGINX = 29080;
const APACHE = 29081;

const VARIANTS = [
  { name: "tp_btf", programs: ["follow_fork_btf", "follow_exec_btf", "follow_exit_btf"], taskBtf: true },
  // The 4.18 path: classic tracepoints, and bpf_get_current_task() as on kernels before 5.11.
  { name: "tracepoint", programs: ["follow_fork_tp", "follow_exec_tp", "follow_exit_tp"], taskBtf: false },
];

/** traced_pids as tgid → kind. */
function tracedPids(l: TestLoader): Map<number, number> {
  const m = l.obj.map("traced_pids");
  const out = new Map<number, number>();
  for (const k of [...m.keys()]) {
    const v = m.lookup(k);
    if (v) {
      out.set(
        new DataView(k.buffer).getUint32(0, true),
        tracedKind(new DataView(v.buffer).getUint32(0, true)),
      );
    }
  }
  return out;
}

function tgidOf(pid: number): number {
  const m = /^Tgid:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  if (!m) throw new HarnessError(`no Tgid in /proc/${pid}/status`);
  return Number(m[1]);
}

/** Forks a child and starts a thread on the first line, prints "child tid", execs `sleep` on the second. */
const PY = `
import os, sys, threading, time
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
t = threading.Thread(target=lambda: time.sleep(30), daemon=True)
t.start()
print(pid, t.native_id, flush=True)
sys.stdin.readline()
os.execvp("sleep", ["sleep", "30"])
`;

Deno.test("follow programs keep traced_pids current (fork, exec, exit), both variants", async (t) => {
  requireRoot("loading BPF programs");
  const python = requireTool("python3", "python3");
  for (const v of VARIANTS) {
    await t.step(`${v.name}: nginx exec'd, workers forked, reload, exit`, async () => {
      await using l = TestLoader.open({
        attach: v.programs.map((program) => ({ program })),
        pids: [],
        ringBytes: 1 << 16,
        globals: { has_task_btf: v.taskBtf },
      });
      await using srv = await startNginx({ port: NGINX, workers: 2 });
      // No wait and no user-space fill: exec and fork put them there before they ran.
      let m = tracedPids(l);
      const { master, workers } = srv.pids();
      for (const p of [master, ...workers]) assertEquals(m.get(p), ServerKind.NGINX, `nginx ${p} traced`);
      const fresh = await srv.reload();
      m = tracedPids(l);
      for (const p of fresh) assertEquals(m.get(p), ServerKind.NGINX, `new worker ${p} traced`);
      await waitUntil(() => workers.every((p) => !alive(p)), 10_000, "old workers exit");
      m = tracedPids(l);
      for (const p of workers) assert(!m.has(p), `exited worker ${p} removed`);
      for (const p of m.keys()) {
        assert(alive(p), `${p} in traced_pids is alive`);
        assertEquals(tgidOf(p), p, `${p} in traced_pids is a process, not a thread`);
      }
      await srv.close();
      assertEquals([...tracedPids(l).keys()].filter((p) => p === master || fresh.includes(p)), [], "stopped");
    });

    await t.step(
      `${v.name}: fork inherits the kind, threads do not, exec into another binary removes`,
      async () => {
        await using l = TestLoader.open({
          attach: v.programs.map((program) => ({ program })),
          pids: [],
          ringBytes: 1 << 16,
          globals: { has_task_btf: v.taskBtf },
        });
        const py = new Deno.Command(python, {
          args: ["-c", PY],
          stdin: "piped",
          stdout: "piped",
          stderr: "null",
        })
          .spawn();
        const w = py.stdin.getWriter();
        const lines = stdoutLines(py, "python");
        const line = lines.next;
        let child = 0;
        try {
          // After its exec is over (an exec into a non-server removes the tgid).
          assertEquals(await line(), "ready");
          l.obj.map("traced_pids").update(u32Key(py.pid), u32Key(ServerKind.OTHER));
          await w.write(new TextEncoder().encode("go\n"));
          const value = await line();
          const [c, tid] = value.split(" ").map(Number);
          child = c;
          assert(child > 0 && tid > 0, `child and thread ids: ${value}`);
          let m = tracedPids(l);
          assertEquals(m.get(child), ServerKind.OTHER, "forked child inherits the kind");
          assert(!m.has(tid), "a thread is not a process");
          await w.write(new TextEncoder().encode("exec\n"));
          await waitUntil(() => !tracedPids(l).has(py.pid), 5000, "exec into sleep removes the tgid");
          assert(tracedPids(l).has(child), "the child is still traced");
          Deno.kill(child, "SIGKILL");
          // The child stays a zombie (its parent, now `sleep`, never reaps): removed at exit, not at reaping.
          await waitUntil(() => !tracedPids(l).has(child), 5000, "killed child removed");
          m = tracedPids(l);
          assertEquals(m.size, 0, `nothing left: ${[...m.keys()]}`);
        } finally {
          await w.close().catch(() => {});
          await lines.cancel();
          try {
            py.kill("SIGKILL");
          } catch { /* exited */ }
          if (child) {
            try {
              Deno.kill(child, "SIGKILL");
            } catch { /* exited */ }
          }
          await py.status;
        }
      },
    );
  }

  await t.step("follow_servers: only the configured servers are added at exec", async () => {
    await using l = TestLoader.open({
      attach: VARIANTS[0].programs.map((program) => ({ program })),
      pids: [],
      ringBytes: 1 << 16,
      globals: { follow_servers: 1 << ServerKind.APACHE },
    });
    await using srv = await startNginx({ port: NGINX, workers: 1 });
    const m = tracedPids(l);
    const { master, workers } = srv.pids();
    for (const p of [master, ...workers]) {
      assert(!m.has(p), `nginx ${p} not added when only Apache is followed`);
    }
  });
});

/** One request per connection, as fast as possible, paths `${prefix}-${i}`; refused connections are skipped. */
async function burst(srv: WebServer, prefix: string, n: number, until?: Promise<unknown>): Promise<number> {
  let done = false;
  until?.then(() => done = true, () => done = true);
  let i = 0;
  for (; i < n && !(until && done); i++) {
    await rawHttp(
      srv.host,
      srv.port,
      httpRequest({ path: `${prefix}-${i}`, headers: [["Connection", "close"]] }),
    )
      .catch(() => {});
  }
  return i;
}

/** Every access-log line whose path starts with prefix is one row with the same path and client port. */
async function everyRequestIsARow(
  srv: WebServer,
  agent: {
    waitForRows(p: (r: Row) => boolean, n: number, t?: number): Promise<Row[]>;
    rows(): Promise<Row[]>;
  },
  prefix: string,
): Promise<number> {
  const want = async () =>
    (await srv.accessLog()).filter((e) => e.request.split(" ")[1]?.startsWith(prefix))
      .map((e) => `${e.request.split(" ")[1]}|${e.remotePort}`).sort();
  // Access-log lines are written after the response: let the log settle.
  let log: string[] = [];
  for (let prev = -1; log.length !== prev;) {
    prev = log.length;
    await delay(300);
    log = await want();
  }
  assertGreater(log.length, 0, `requests in ${srv.kind}'s access log for ${prefix}`);
  const mine = (r: Row) => r.dst_port === srv.port && r.path.startsWith(prefix);
  await agent.waitForRows(mine, log.length, 10_000).catch(() => {});
  const rows = (await agent.rows()).filter(mine).map((r) => `${r.path}|${r.src_port}`).sort();
  const missing = log.filter((k) => !rows.includes(k));
  assertEquals(
    missing,
    [],
    `${srv.kind} ${prefix}: requests without a row (${rows.length} rows, ${log.length} logged)`,
  );
  assertEquals(rows.length, log.length, `${srv.kind} ${prefix}: one row per request`);
  return log.length;
}

Deno.test("agent: servers started after it, reloads and graceful restarts lose no request", async () => {
  await using agent = await startAgent({ config: { metrics: { enabled: false } } });
  assertEquals(agent.capture.follow, "tp_btf", `follow hook in the ready line: ${agent.readyLine}`);

  // nginx after the agent: requests at once, then during and right after a reload.
  await using nginx = await startNginx({ port: NGINX, workers: 2 });
  await burst(nginx, "/ng-start", 15);
  const reloading = nginx.reload();
  await burst(nginx, "/ng-during", 200, reloading);
  await reloading;
  await burst(nginx, "/ng-after", 15);
  for (const p of ["/ng-start", "/ng-during", "/ng-after"]) await everyRequestIsARow(nginx, agent, p);

  // Apache after the agent, then a graceful restart (new children from the same master).
  await using apache = await startApache({ port: APACHE, workers: 2 });
  await burst(apache, "/ap-start", 15);
  const restarting = apache.reload();
  await burst(apache, "/ap-during", 200, restarting);
  await restarting;
  await burst(apache, "/ap-after", 15);
  for (const p of ["/ap-start", "/ap-during", "/ap-after"]) await everyRequestIsARow(apache, agent, p);
});

/** A tc_ingress instance of its own (maps, ring) on dev's ingress; its syn_facts map shows the SYNs it saw. */
function tcInstance(dev: string, port: number, handle: number, priority: number) {
  const obj = BpfObject.openMem(embeddedObject());
  try {
    for (const p of obj.programs()) p.autoload = p.name === "tc_ingress";
    obj.setRingSize("events", 1 << 16);
    obj.setGlobals({ self_tgid: Deno.pid, use_ringbuf: true });
    obj.load();
    obj.map("listen_ports").update(u32Key(port), new Uint8Array([1]));
    obj.program("tc_ingress").attachTc({ iface: dev, direction: "ingress", handle, priority });
    return {
      /** Client ports of the SYNs this instance kept for a first read (none comes: no read program). */
      syns: () => keptSyns(obj).filter((s) => s.dstPort === port).map((s) => s.srcPort),
      close: () => obj.close(),
    };
  } catch (e) {
    obj.close();
    throw e;
  }
}

Deno.test("tc_ingress passes the packet on to the next filter (TC_ACT_UNSPEC)", async () => {
  requireRoot("tc");
  await using ns = await createNetns("ja4follow");
  await using _srv = await startNginx({ port: NGINX, hosts: [ns.hostAddr], workers: 1 });
  // Ours first, then another observer later in the same chain (here: a second instance of the program).
  const first = tcInstance(ns.hostIf, NGINX, 0x4a34, 0x4a34);
  const second = tcInstance(ns.hostIf, NGINX, 0x4a36, 0x4a36);
  try {
    const ports: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await curl(
        ["-o", "/dev/null", "-w", "%{http_code} %{local_port}", `http://${ns.hostAddr}:${NGINX}/tc-${i}`],
        { netns: ns },
      );
      const [code, port] = r.stdout.trim().split(" ");
      assertEquals(code, "200", `request ${i} passes both filters: ${r.stderr}`);
      ports.push(Number(port));
    }
    assertEquals(first.syns().sort(), [...ports].sort(), "the first filter saw every SYN");
    assertEquals(second.syns().sort(), [...ports].sort(), "the filter after it saw every SYN too");
  } finally {
    second.close();
    first.close();
  }
});

/** Binds a TCP socket (v4 or v6 loopback), prints its port, listens on the first stdin line, then waits. */
const LISTEN_PY = `
import socket, sys
six = sys.argv[1] == "6"
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_STREAM)
s.bind(("::1" if six else "127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
s.listen(8)
print("listening", flush=True)
sys.stdin.readline()
`;

/** A bound, not yet listening socket in its own process: listen() when told. */
async function lateListener(family: "4" | "6") {
  const child = new Deno.Command("python3", {
    args: ["-c", LISTEN_PY, family],
    stdin: "piped",
    stdout: "piped",
  })
    .spawn();
  const lines = stdoutLines(child, "listener");
  const writer = child.stdin.getWriter();
  const line = lines.next;
  const port = Number(await line());
  return {
    pid: child.pid,
    port,
    listen: async () => {
      await writer.write(new TextEncoder().encode("go\n"));
      assertEquals(await line(), "listening");
    },
    [Symbol.asyncDispose]: async () => {
      await writer.close().catch(() => {});
      await lines.cancel();
      await child.status;
    },
  };
}

Deno.test("tp_enter_listen: a traced server's new port reaches listen_ports at its listen()", async (t) => {
  requireRoot("loading BPF programs");
  const has = (l: TestLoader, port: number) => l.obj.map("listen_ports").lookup(u32Key(port))?.[0] === 1;
  const trace = (l: TestLoader, pid: number) =>
    l.obj.map("traced_pids").update(u32Key(pid), u32Key(ServerKind.NGINX));
  for (const family of ["4", "6"] as const) {
    await t.step(`IPv${family}: traced process added, untraced one not`, async () => {
      await using l = TestLoader.open({ attach: [{ program: "tp_enter_listen" }], pids: [] });
      await using traced = await lateListener(family);
      await using other = await lateListener(family);
      trace(l, traced.pid);
      await traced.listen();
      await other.listen();
      assert(has(l, traced.port), `port ${traced.port} of the traced process`);
      assert(!has(l, other.port), `port ${other.port} of an untraced process stays out`);
    });
  }
  await t.step("follow_listen = false (fixed capture.ports): nothing added", async () => {
    await using l = TestLoader.open({
      attach: [{ program: "tp_enter_listen" }],
      pids: [],
      globals: { follow_listen: false },
    });
    await using traced = await lateListener("4");
    trace(l, traced.pid);
    await traced.listen();
    assert(!has(l, traced.port), "fixed ports: the kernel adds none");
  });
});
