/**
 * The README's first command as written: `scripts/run.sh` runs the agent from source with its embedded
 * default (the packaged V8 flags, `deno run` flags and environment from scripts/agent-flags.sh), one JSON line
 * per HTTP request on stdout. Against a real nginx on a port of its own: the agent finds the port from nginx's
 * sockets, the request comes out as one JSON line with its JA4H and JA4T, and SIGTERM ends it with exit 0.
 * On the way, TCP health checks (connect, close, not a byte) reach the agent not at all: the kernel keeps
 * each one's SYN for a first read that never comes (/metrics: no event, no pending SYN, no connection state).
 * Needs root and nginx.
 */
import { assert, assertEquals, assertMatch } from "../../src/testing/asserts.ts";
import { HarnessError, requireRoot, stdoutLines, stopChild, waitUntil } from "../helpers/proc.ts";
import { startNginx } from "../helpers/servers.ts";
import { AGENT_DENO_FLAGS, AGENT_ENV, AGENT_V8_FLAGS } from "../helpers/agent.ts";
import { parsePrometheusText } from "../../src/metrics/registry.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const PORT = 28180;

Deno.test({
  name: "README: scripts/run.sh runs the agent with its embedded default, a JSON line per request on stdout",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  requireRoot("the README's run command (the agent loads BPF programs)");
  await using nginx = await startNginx({ port: PORT, workers: 1 });
  const child = new Deno.Command("bash", {
    args: [`${ROOT}scripts/run.sh`],
    cwd: "/",
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let stderr = "";
  const errs = (async () => {
    for await (const s of child.stderr.pipeThrough(new TextDecoderStream())) stderr += s;
  })();
  const lines = stdoutLines(child, "scripts/run.sh");
  try {
    await waitUntil(
      () => / INFO ready /.test(stderr),
      120_000,
      "the agent's ready line",
      () => Promise.resolve(stderr.slice(-3000)),
    );
    // run.sh execs deno with the packaged flags and environment (scripts/agent-flags.sh reads their files).
    const argv = Deno.readTextFileSync(`/proc/${child.pid}/cmdline`).split("\0");
    for (const f of [...AGENT_DENO_FLAGS, `--v8-flags=${AGENT_V8_FLAGS}`]) {
      assert(argv.includes(f), `${f} in the agent's command line ${JSON.stringify(argv)}`);
    }
    const environ = Deno.readTextFileSync(`/proc/${child.pid}/environ`).split("\0");
    for (const [k, v] of Object.entries(AGENT_ENV)) {
      assert(environ.includes(`${k}=${v}`), `${k}=${v} in the agent's environment`);
    }
    assert(Object.keys(AGENT_ENV).length > 0 && AGENT_DENO_FLAGS.length > 0, "flag files read");
    // The ready line says which ports it watches: nginx's, found from its sockets.
    assertMatch(stderr, new RegExp(`ready .*ports=[0-9,]*\\b${PORT}\\b`));
    /** The JSON row of a GET of `path` (the agent writes every row to stdout). */
    const rowFor = async (path: string) => {
      const res = await fetch(`${nginx.url}${path.slice(1)}`, { headers: { "User-Agent": "readme-test" } });
      await res.body?.cancel();
      let row: Record<string, unknown> | undefined;
      const deadline = Date.now() + 15_000;
      while (!row && Date.now() < deadline) {
        const line = await Promise.race([
          lines.next(),
          new Promise<string>((_, rej) =>
            setTimeout(() => rej(new HarnessError("no row within 15 s")), 15_000)
          ),
        ]);
        const r = JSON.parse(line) as Record<string, unknown>; // every stdout line is a JSON row
        if (r.path === path) row = r;
      }
      assert(row, `a row for ${path}; agent log:\n${stderr.slice(-2000)}`);
      return row;
    };
    const row = await rowFor(`/readme-${crypto.randomUUID()}`);
    assertEquals([row.method, row.dst_port, row.user_agent, row.server], [
      "GET",
      PORT,
      "readme-test",
      "nginx",
    ]);
    assertMatch(String(row.ja4h), /^ge11nn\d{2}[^_]{4}_[0-9a-f]{12}_0{12}_0{12}$/);
    assertMatch(String(row.ja4t), /^\d+_[\d-]+_\d+_\d+$/, "JA4T from the connection's SYN");

    // TCP health checks: nginx never reads a byte of them, so no read takes their SYNs from the kernel.
    const metrics = async () =>
      parsePrometheusText(await (await fetch("http://127.0.0.1:9435/metrics")).text());
    const events = async () => {
      let n = 0;
      for (const [k, v] of await metrics()) if (k.startsWith("ja4ebpf_events_total")) n += v;
      return n;
    };
    const before = await events();
    const checks = 50;
    for (let i = 0; i < checks; i++) (await Deno.connect({ hostname: "127.0.0.1", port: PORT })).close();
    // A request after them: once its row is out, the agent has read whatever records the checks made.
    const after = await rowFor(`/readme-after-${crypto.randomUUID()}`);
    assertMatch(String(after.ja4t), /^\d+_[\d-]+_\d+_\d+$/, "JA4T of the request after the checks");
    const m = await metrics();
    const got = await events() - before;
    // The request after them: its read, perhaps its close. One record per check would be 50 more.
    assert(got <= 3, `${checks} health checks and one request made ${got} events`);
    assertEquals(m.get("ja4ebpf_correlation_pending_syns"), 0, "SYNs waiting in user space");
    const conns = m.get("ja4ebpf_correlation_connections") ?? NaN;
    assert(conns <= 2, `health checks make no connection state: ${conns} connections tracked`);
  } finally {
    const st = await stopChild(child, "SIGTERM", 20_000);
    await lines.cancel();
    await errs.catch(() => {});
    assertEquals(st.code, 0, `exit status after SIGTERM; log:\n${stderr.slice(-2000)}`);
  }
});
