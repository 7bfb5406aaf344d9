/**
 * Who pays for the HTTPS plaintext probes. The probes go on the servers' own files (nginx's ngx_ssl_recv,
 * the SSL_read PLT stub of Apache's mod_ssl.so), so:
 * - a TLS client and a TLS server the agent does not follow (Python ssl, a keep-alive loop) carry no uprobe
 *   area and cost 0 probe hits — with probes on libssl (`uprobes.tls_probes: library`, the old design, run
 *   here as the control) the same client traps on every read;
 * - nginx pays one probe pair per keep-alive request, counted by the agent's per-process hit counter;
 * - workers forked while the load runs (nginx reload, a worker killed with SIGKILL and respawned, Apache
 *   children replaced after MaxConnectionsPerChild) are covered from their first request: every logged
 *   request has its row, and the new processes' requests are among them.
 *
 * Needs root, nginx, apache2, python3, bpftool. Rows are filtered by this file's ports.
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import type { Row } from "../../src/sink/row.ts";
import { enableBpfStats, progRuns, type RunningAgent, startAgent } from "../helpers/agent.ts";
import { readPrograms } from "../../src/bpf/plan.ts";
import { type AccessEntry, startApache, startNginx, type WebServer } from "../helpers/servers.ts";
import { makeCert } from "../helpers/certs.ts";
import { delay, makeTempDir } from "../helpers/proc.ts";
import { bystander, hitsOf, sslHits, startBystanderServer, startTlsLoad } from "../helpers/tls_load.ts";

const NGINX = 26680;
const NGINX_TLS = 26643;
const APACHE = 26681;
const APACHE_TLS = 26644;
const OTHER_TLS = 26645;
const METRICS = 26636;

const pathOf = (e: AccessEntry) => e.request.split(" ")[1] ?? "";

function excerpt(agent: RunningAgent): string {
  return agent.stderr().split("\n").filter((l) => !/ DEBUG /.test(l)).slice(-30).join("\n");
}

/** One keep-alive connection of `requests` GETs of `path` (the bystander script pointed at a server). */
async function keepAlive(port: number, requests: number, path: string) {
  return await bystander(port, requests, path);
}

/** The bystander client's 300 requests, and how often the agent's read() program ran meanwhile (run counts). */
async function bystanderReads(agentPid: number) {
  const readProg = readPrograms()[0];
  const restoreStats = enableBpfStats();
  try {
    const before = progRuns(agentPid, readProg);
    const by = await bystander(OTHER_TLS, 300);
    return { by, readRuns: progRuns(agentPid, readProg) - before };
  } finally {
    restoreStats();
  }
}

Deno.test("HTTPS probes: servers trap once per request, a bystander TLS client and server not at all", async (t) => {
  await using cert = await makeCert();
  await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 1, cert });
  await using other = await startBystanderServer(OTHER_TLS, cert.certPath, cert.keyPath);
  const ports = { capture: { ports: [NGINX, NGINX_TLS, OTHER_TLS] } };

  await t.step("default: probes on nginx's own file; bystanders untouched", async () => {
    await using agent = await startAgent({ metricsPort: METRICS, config: ports });
    assert(
      /https=server_symbol:\S*nginx/.test(agent.readyLine),
      `the ready line names the method and file: ${agent.readyLine}`,
    );
    const nginxPids = () => [nginx.pids().master, ...nginx.pids().workers];

    // nginx: traps per keep-alive request, from the agent's own counter.
    const before = hitsOf(await sslHits(agent.pid), nginxPids());
    const n = 200;
    const client = await keepAlive(NGINX_TLS, n, "/keepalive");
    const rows = await agent.waitForRows(
      (r) => r.dst_port === NGINX_TLS && r.path === "/keepalive",
      n,
      30_000,
    )
      .catch((e) => {
        throw new Error(`${e.message}\n${excerpt(agent)}`);
      });
    assertEquals(rows.length, n, "one row per request");
    assert(rows.every((r) => r.capture === "ssl_uprobe" && r.ja4h !== ""), "plaintext rows with JA4H");
    const hits = await sslHits(agent.pid);
    const perRequest = (hitsOf(hits, nginxPids()) - before) / n;
    console.log(`nginx probe hits per keep-alive request: ${perRequest.toFixed(3)}`);
    // ngx_ssl_recv entry + return once per request (+ the handshake's read): SSL_read on libssl was 4+.
    assert(perRequest >= 1.9 && perRequest <= 2.2, `nginx traps per request ${perRequest}`);
    assertEquals(hits.get(client.pid) ?? 0, 0, "nginx's TLS client (Python) had no probe hit");
    assertEquals(client.uprobes_area, false, "nginx's TLS client has no [uprobes] area");

    // The bystander pair: neither the client nor the server is followed. No SSL_* probe is on (ngx_ssl_recv
    // has its fd; mod_ssl's reads pass apr_socket_recv), so the read() programs are not attached: the
    // bystanders' read() calls run none of the agent's programs.
    const { by, readRuns } = await bystanderReads(agent.pid);
    assertEquals(readRuns, 0, "read() program runs");
    assert(!/read tracepoints attached/.test(agent.stderr()), `no read tracepoints:\n${excerpt(agent)}`);
    const after = await sslHits(agent.pid);
    assertEquals(by.uprobes_area, false, "bystander client: no [uprobes] area (no breakpoint was hit)");
    assertEquals(after.get(by.pid) ?? 0, 0, "bystander client: 0 probe hits");
    assertEquals(after.get(other.pid) ?? 0, 0, "bystander server: 0 probe hits");
    assert(
      !Deno.readTextFileSync(`/proc/${other.pid}/maps`).includes("[uprobes]"),
      "bystander server: no [uprobes] area",
    );
    assertEquals(
      (await agent.rows()).filter((r) => r.dst_port === OTHER_TLS).length,
      0,
      "no rows from the unfollowed server",
    );
  });

  await t.step("control: probes on libssl (tls_probes: library) make the same bystander trap", async () => {
    await using agent = await startAgent({
      metricsPort: METRICS,
      config: { ...ports, uprobes: { tls_probes: "library" } },
    });
    assert(/https=library:\S*libssl/.test(agent.readyLine), `library method named: ${agent.readyLine}`);
    await agent.waitForLog(/HTTPS probes on libssl for this server/, 5_000);
    // SSL_read on libssl learns its fd from the read() inside it: the read programs are on, and run for the
    // bystander's reads too.
    const { by, readRuns } = await bystanderReads(agent.pid);
    assertGreater(readRuns, 300, "read() program runs");
    const hits = await sslHits(agent.pid);
    assertEquals(by.uprobes_area, true, "the bystander client hit a breakpoint");
    assertGreater(hits.get(by.pid) ?? 0, 300, "bystander client hits: at least one per request");
    // Fidelity is the same in both modes.
    await keepAlive(NGINX_TLS, 20, "/library");
    await agent.waitForRows((r) => r.dst_port === NGINX_TLS && r.path === "/library", 20, 20_000);
  });
});

/** Every logged request of `prefix` has exactly one row; returns the rows by path. */
async function everyRequestARow(
  agent: RunningAgent,
  server: WebServer,
  port: number,
  prefix: string,
): Promise<{ logged: AccessEntry[]; rows: Row[] }> {
  await delay(1000); // the last responses are logged after they are sent
  const logged = (await server.accessLog()).filter((e) =>
    e.serverPort === port && pathOf(e).startsWith(prefix)
  );
  const match = (r: Row) => r.dst_port === port && r.path.startsWith(prefix);
  let rows: Row[] = [];
  try {
    rows = await agent.waitForRows(match, logged.length, 30_000);
  } catch {
    rows = (await agent.rows()).filter(match);
  }
  await delay(800); // duplicates would show by now
  rows = (await agent.rows()).filter(match);
  const have = new Map<string, number>();
  for (const r of rows) have.set(r.path, (have.get(r.path) ?? 0) + 1);
  const missing = logged.map(pathOf).filter((p) => !have.has(p));
  assertEquals(
    missing,
    [],
    `${prefix}: logged requests without a row (of ${logged.length})\n${excerpt(agent)}`,
  );
  assertEquals([...have].filter(([, n]) => n > 1), [], `${prefix}: no request twice`);
  return { logged, rows };
}

Deno.test("HTTPS rows from freshly forked workers under load: nginx reload, kill -9, Apache MaxConnectionsPerChild", async (t) => {
  await using cert = await makeCert();
  await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 2, cert, http2: false });
  await using apache = await startApache({
    port: APACHE,
    tlsPort: APACHE_TLS,
    workers: 2,
    cert,
    http2: false,
    extraConfig: "MaxConnectionsPerChild 15",
  });
  const dir = await makeTempDir("ja4ebpf-https-fork-");
  try {
    await using agent = await startAgent({
      metricsPort: METRICS,
      config: { capture: { ports: [NGINX, NGINX_TLS, APACHE, APACHE_TLS] } },
    });
    assert(/server_symbol:\S*nginx/.test(agent.readyLine), agent.readyLine);
    assert(/plt:\S*mod_ssl\.so/.test(agent.readyLine), agent.readyLine);

    await t.step("nginx: reloads and killed workers while new connections arrive", async () => {
      const load = startTlsLoad(NGINX_TLS, "/ng", dir);
      const fresh = new Set<number>();
      await delay(800);
      for (let i = 0; i < 3; i++) {
        for (const p of await nginx.reload()) fresh.add(p);
        await delay(400);
        const victim = nginx.pids().workers[0];
        Deno.kill(victim, "SIGKILL");
        // The master forks a replacement at once; the load goes on meanwhile.
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline) {
          const now = nginx.pids().workers.filter((p) => p !== victim && !fresh.has(p));
          if (now.length) {
            for (const p of now) fresh.add(p);
            break;
          }
          await delay(20);
        }
        await delay(400);
      }
      const res = await load.stop();
      assertGreater(
        res.done.length,
        50,
        `load answered (${res.errors.length} failed: ${res.errors.slice(0, 3)})`,
      );
      const { logged, rows } = await everyRequestARow(agent, nginx, NGINX_TLS, "/ng/");
      const byPid = new Set(rows.map((r) => r.pid));
      const served = [...fresh].filter((p) => byPid.has(p));
      console.log(
        `nginx: ${logged.length} requests logged, all rows; ${served.length}/${fresh.size} new workers`,
      );
      // Each new worker took connections right away (the load never paused): their rows are there.
      assertGreater(served.length, fresh.size / 2, `rows from the new workers ${[...fresh]}: ${[...byPid]}`);
    });

    await t.step("Apache: children replaced every 15 connections", async () => {
      const first = new Set(apache.pids().workers);
      const load = startTlsLoad(APACHE_TLS, "/ap", dir, 3, 0.005);
      await delay(5000);
      const res = await load.stop();
      assertGreater(
        res.done.length,
        60,
        `load answered (${res.errors.length} failed: ${res.errors.slice(0, 3)})`,
      );
      const { logged, rows } = await everyRequestARow(agent, apache, APACHE_TLS, "/ap/");
      const newChildren = new Set(rows.map((r) => r.pid).filter((p) => !first.has(p)));
      console.log(
        `apache: ${logged.length} requests logged, all rows; rows from ${newChildren.size} new children`,
      );
      assertGreater(newChildren.size, 1, "children forked during the load served requests, all captured");
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("HTTPS: an nginx started after the agent is captured from its first request (installed file pre-probed)", async () => {
  await using cert = await makeCert();
  await using agent = await startAgent({
    metricsPort: METRICS,
    config: { capture: { ports: [NGINX, NGINX_TLS] } },
  });
  // No nginx of ours runs yet: the installed binary is probed ahead (only processes mapping it trap).
  assert(/https=\S*server_symbol:\/usr\/sbin\/nginx/.test(agent.readyLine), agent.readyLine);
  await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 1, cert, http2: false });
  // At once, before the agent's next once-a-second look at the processes.
  const c = await keepAlive(NGINX_TLS, 3, "/first");
  const logged = (await nginx.waitForRequests(3)).filter((e) => pathOf(e) === "/first");
  assertEquals(logged.length, 3);
  const rows = await agent.waitForRows((r) => r.dst_port === NGINX_TLS && r.path === "/first", 3, 20_000)
    .catch((e) => {
      throw new Error(`${e.message}\n${excerpt(agent)}`);
    });
  assertEquals(c.connections, 1);
  assertEquals(rows.map((r) => r.src_port), [c.port, c.port, c.port], "the three requests of the connection");
});
