/**
 * Libraries replaced under running servers (what a package upgrade does), for both uprobe sets the agent
 * keeps on every mapped copy of a library (keyed by device + inode).
 *
 * libapr replaced under a running Apache (what a package upgrade does): Apache loads its own copy of Debian's
 * libapr-1.so.0 from a temp dir (LD_LIBRARY_PATH), the agent probes it; the file is then replaced atomically
 * (new inode). The agent must probe the new file (log: re-attached) and keep the probes of the old inode
 * while Apache still maps it (a graceful restart keeps the master's mappings); a fresh Apache maps the new
 * file and is captured too, after which the old inode's probes are detached. An agent started after an
 * upgrade probes the deleted file Apache still runs. Every request is one row.
 *
 * libssl the same way under nginx (TLS, HTTP/1.1 and HTTP/2), with the HTTPS probes on libssl
 * (`uprobes.tls_probes: library`, the fallback for servers whose own files give no probe site; by default
 * nginx is probed in its own file, which the same code follows): `nginx -s reload` forks new workers from the
 * old master, so they keep the old (deleted) libssl; a fresh nginx maps the new one. Every request over TLS
 * is exactly one row: none lost, none read twice.
 *
 * Needs root, Debian's apache2 and nginx-light, curl. Rows are filtered by this file's port: other agents and servers may run
 * on the host at the same time.
 */
import { assert, assertEquals } from "../../src/testing/asserts.ts";
import type { Row } from "../../src/sink/row.ts";
import { findLibrary, mappedFiles } from "../../src/bpf/elf.ts";
import { parseRows, type RunningAgent, startAgent } from "../helpers/agent.ts";
import { startApache, startNginx, type WebServer } from "../helpers/servers.ts";
import { curl } from "../helpers/clients.ts";
import { HarnessError, makeTempDir, requireRoot } from "../helpers/proc.ts";

const APACHE = 27081;
const METRICS = 27082;
const NGINX = 27080;
const NGINX_TLS = 27443;
const LIBAPR = "libapr-1.so.0";
const LIBSSL = "libssl.so.3";

/** A server started with `dir` first on its library path (its master and workers map the copies there). */
async function withLibraryPath(dir: string, start: () => Promise<WebServer>): Promise<WebServer> {
  const prev = Deno.env.get("LD_LIBRARY_PATH");
  Deno.env.set("LD_LIBRARY_PATH", dir);
  try {
    return await start();
  } finally {
    if (prev === undefined) Deno.env.delete("LD_LIBRARY_PATH");
    else Deno.env.set("LD_LIBRARY_PATH", prev);
  }
}

const apacheWith = (dir: string) =>
  withLibraryPath(dir, () => startApache({ port: APACHE, workers: 2, http2: false }));
const nginxWith = (dir: string) =>
  withLibraryPath(dir, () => startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 2 }));

/** Copies the system library to `to` through a temp name and a rename: a new inode, never a half file. */
async function installCopy(system: string, to: string): Promise<number> {
  await Deno.copyFile(system, `${to}.new`);
  await Deno.rename(`${to}.new`, to);
  return Deno.statSync(to).ino!;
}

/** One request per connection to each path; every transfer must succeed. */
async function get(server: WebServer, paths: string[]): Promise<void> {
  for (const p of paths) {
    const r = await curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", `${server.url}${p.slice(1)}`]);
    if (r.code !== 0 || r.stdout !== "404" && r.stdout !== "200") {
      throw new HarnessError(`curl ${p}: exit ${r.code} status ${r.stdout} ${r.stderr}`);
    }
  }
}

async function expectRows(agent: RunningAgent, paths: string[]): Promise<void> {
  const want = new Set(paths);
  const rows = await agent.waitForRows((r) => r.dst_port === APACHE && want.has(r.path), paths.length, 15_000)
    .catch((e) => {
      throw new Error(`${e instanceof Error ? e.message : e}\n${excerpt(agent)}`);
    });
  assertEquals(rows.map((r) => r.path).sort(), [...paths].sort(), "one row per request");
  for (const r of rows) assertEquals([r.server, r.capture], ["apache", "uprobe"]);
}

/**
 * Every row on `port`, rotated files included: the agent traces every nginx/Apache on the host, and a
 * benchmark elsewhere can fill the file sink past its rotation size during the test.
 */
async function rowsOn(agent: RunningAgent, port: number): Promise<Row[]> {
  const out: Row[] = [];
  for (const f of [agent.rowsPath, ...Array.from({ length: 5 }, (_, i) => `${agent.rowsPath}.${i + 1}`)]) {
    const text = await Deno.readTextFile(f).catch(() => "");
    out.push(...parseRows(text).filter((r) => r.dst_port === port));
  }
  return out;
}

function excerpt(agent: RunningAgent): string {
  return agent.stderr().split("\n").filter((l) => !/ DEBUG /.test(l)).slice(-30).join("\n");
}

/**
 * A server started after the agent is traced by its next process scan (once a second): until a warm-up
 * request shows up as a row, requests could be read before the BPF filter knows the new processes.
 */
async function warmUp(agent: RunningAgent, server: WebServer, tag: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const p = `/warm-${tag}-${i}`;
    await get(server, [p]);
    const ok = await agent.waitForRows((r) => r.dst_port === APACHE && r.path === p, 1, 1000).then(
      () => true,
      () => false,
    );
    if (ok) return;
  }
  throw new Error(`the agent never captured ${server.url}\n${excerpt(agent)}`);
}

const paths = (phase: string, n: number) => Array.from({ length: n }, (_, i) => `/${phase}-${i}`);

Deno.test("agent: libapr replaced under Apache is probed again; every request is a row", async () => {
  requireRoot("uprobes");
  const system = (await findLibrary(LIBAPR, []))?.path;
  if (!system) throw new HarnessError(`${LIBAPR} not found: install Debian's libapr1 (apache2)`);
  const dir = await makeTempDir("ja4ebpf-libapr-");
  const lib = `${dir}/${LIBAPR}`;
  let apache: WebServer | undefined;
  let agent: RunningAgent | undefined;
  try {
    const oldInode = await installCopy(system, lib);
    apache = await apacheWith(dir);
    const maps = mappedFiles([apache.pids().master], /^libapr-1\.so/);
    assertEquals(maps.map((m) => [m.path, m.inode]), [[lib, oldInode]], "Apache maps the copy");

    agent = await startAgent({
      metricsPort: METRICS,
      config: { uprobes: { servers: ["apache"] }, capture: { apache: "uprobe" } },
    });
    assertEquals(agent.capture.apache, "uprobe");
    await get(apache, paths("before", 5));
    await expectRows(agent, paths("before", 5));

    // The upgrade: a new file at the same path. Apache keeps mapping the old (now deleted) inode.
    const newInode = await installCopy(system, lib);
    assert(newInode !== oldInode, "the replacement has a new inode");
    const re = await agent.waitForLog(/apache uprobes re-attached: libapr was replaced/, 10_000);
    assert(re.includes(lib) && re.includes(`inode=${newInode}`), re);

    // Graceful restart: new children, forked from the same master.
    await apache.reload();
    const after = mappedFiles(apache.pids().workers, /^libapr-1\.so/);
    assert(
      after.length > 0 && after.every((m) => m.inode === oldInode && m.deleted),
      "graceful children keep the old inode",
    );
    await get(apache, paths("graceful", 5));
    await expectRows(agent, paths("graceful", 5));

    // A fresh Apache (what the package's restart does) maps the new file: captured by the new probes.
    await apache.close();
    apache = await apacheWith(dir);
    const fresh = mappedFiles([apache.pids().master], /^libapr-1\.so/);
    assertEquals(
      fresh.map((m) => [m.inode, m.deleted]),
      [[newInode, false]],
      "the fresh Apache maps the new file",
    );
    await warmUp(agent, apache, "fresh");
    await get(apache, paths("fresh", 5));
    await expectRows(agent, paths("fresh", 5));
    // Nobody maps the old inode any more: its probes go.
    const gone = await agent.waitForLog(/apache uprobes detached: no process maps this libapr/, 10_000);
    assert(gone.includes(`inode=${oldInode}`), gone);

    // Nothing was read twice (two probes on one file) nor lost.
    const all = (await rowsOn(agent, APACHE)).filter((r) => !r.path.startsWith("/warm-"));
    assertEquals(all.length, 15, `rows on port ${APACHE}`);
    const logged = (await apache.accessLog()).filter((e) => e.request.includes("/fresh-"));
    assertEquals(logged.length, 5, "the fresh Apache logged its 5 requests");

    // Upgraded while no agent ran: an agent started now finds Apache mapping a deleted file and probes it
    // through /proc/PID/map_files (the path names the newest file, not the one Apache runs).
    await agent.close();
    const third = await installCopy(system, lib);
    assert(third !== newInode);
    agent = await startAgent({
      metricsPort: METRICS,
      config: { uprobes: { servers: ["apache"] }, capture: { apache: "uprobe" } },
    });
    const via = await agent.waitForLog(/apache uprobes attached .*via=\/proc\/\d+\/map_files\//, 10_000);
    assert(via.includes(`inode=${newInode}`), via);
    await get(apache, paths("deleted", 5));
    await expectRows(agent, paths("deleted", 5));
  } finally {
    await agent?.close();
    await apache?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Over TLS, `perConn` requests per connection, alternately HTTP/1.1 and HTTP/2; every transfer must succeed. */
async function getTls(server: WebServer, paths: string[], perConn = 2): Promise<void> {
  for (let i = 0; i < paths.length; i += perConn) {
    const h2 = (i / perConn) % 2 === 1;
    const batch = paths.slice(i, i + perConn);
    const r = await curl([
      "-k",
      h2 ? "--http2" : "--http1.1",
      "-w",
      "%{http_code} %{http_version}\\n",
      ...batch.flatMap((p) => ["-o", "/dev/null", `${server.tlsUrl}${p.slice(1)}`]),
    ]);
    const got = r.stdout.trim().split("\n");
    const ok = new RegExp(`^(200|404) ${h2 ? "2" : "1\\.1"}$`);
    if (r.code !== 0 || got.length !== batch.length || !got.every((l) => ok.test(l))) {
      throw new HarnessError(`curl ${batch.join(" ")}: exit ${r.code} got ${got} want ${ok} ${r.stderr}`);
    }
  }
}

/** Exactly one ssl_uprobe row per path, with the HTTP version it was sent with (see getTls). */
async function expectTlsRows(agent: RunningAgent, paths: string[], perConn = 2): Promise<void> {
  const want = new Set(paths);
  const rows = await agent.waitForRows(
    (r) => r.dst_port === NGINX_TLS && want.has(r.path),
    paths.length,
    15_000,
  )
    .catch((e) => {
      throw new Error(`${e instanceof Error ? e.message : e}\n${excerpt(agent)}`);
    });
  assertEquals(rows.map((r) => r.path).sort(), [...paths].sort(), "one row per request");
  for (const r of rows) {
    const h2 = Math.floor(paths.indexOf(r.path) / perConn) % 2 === 1;
    assertEquals([r.server, r.capture, r.http_version], ["nginx", "ssl_uprobe", h2 ? "20" : "11"], r.path);
  }
}

/** Like warmUp, over TLS: the new nginx is traced and its libssl probed once a request shows up. */
async function warmUpTls(agent: RunningAgent, server: WebServer, tag: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const p = `/warm-${tag}-${i}`;
    await getTls(server, [p], 1);
    const ok = await agent.waitForRows((r) => r.dst_port === NGINX_TLS && r.path === p, 1, 1000).then(
      () => true,
      () => false,
    );
    if (ok) return;
  }
  throw new Error(`the agent never captured ${server.tlsUrl}\n${excerpt(agent)}`);
}

Deno.test("agent: libssl replaced under nginx is probed again; every TLS request is one row", async () => {
  requireRoot("uprobes");
  const system = (await findLibrary(LIBSSL, []))?.path;
  if (!system) throw new HarnessError(`${LIBSSL} not found: install Debian's libssl3`);
  const dir = await makeTempDir("ja4ebpf-libssl-");
  const lib = `${dir}/${LIBSSL}`;
  const cfg = {
    uprobes: { servers: ["nginx"], tls_probes: "library" },
    capture: { ports: [NGINX, NGINX_TLS] },
  };
  const ssl = /^libssl\.so/;
  let nginx: WebServer | undefined;
  let agent: RunningAgent | undefined;
  try {
    const oldInode = await installCopy(system, lib);
    nginx = await nginxWith(dir);
    assertEquals(mappedFiles([nginx.pids().master], ssl).map((m) => [m.path, m.inode]), [[lib, oldInode]]);

    agent = await startAgent({ metricsPort: METRICS, config: cfg });
    // Other servers on the host may map the system libssl: look for the lines about this copy.
    const about = (msg: string, rest = "") => new RegExp(`${msg}.* library=${escapeRe(lib)} ${rest}`);
    const attached = await agent.waitForLog(about("HTTPS plaintext capture attached"), 10_000);
    assert(attached.includes(`inode=${oldInode}`), attached);
    await getTls(nginx, paths("before", 8));
    await expectTlsRows(agent, paths("before", 8));

    // The upgrade: a new file at the same path, probed ahead of the next fresh start.
    const newInode = await installCopy(system, lib);
    assert(newInode !== oldInode, "the replacement has a new inode");
    const re = await agent.waitForLog(
      about("HTTPS plaintext capture re-attached: libssl was replaced"),
      10_000,
    );
    assert(re.includes(`inode=${newInode}`), re);

    // nginx -s reload: new workers forked from the same master keep the old, deleted libssl.
    await nginx.reload();
    const after = mappedFiles(nginx.pids().workers, ssl);
    assertEquals(
      after.map((m) => [m.inode, m.deleted]),
      nginx.pids().workers.map(() => [oldInode, true]),
      "reloaded workers map the old libssl",
    );
    await getTls(nginx, paths("reload", 8));
    await expectTlsRows(agent, paths("reload", 8));

    // A fresh nginx maps the new file: captured by the new probes; the old inode's go.
    await nginx.close();
    nginx = await nginxWith(dir);
    assertEquals(mappedFiles([nginx.pids().master], ssl).map((m) => [m.inode, m.deleted]), [[
      newInode,
      false,
    ]]);
    await warmUpTls(agent, nginx, "fresh");
    await getTls(nginx, paths("fresh", 8));
    await expectTlsRows(agent, paths("fresh", 8));
    const gone = await agent.waitForLog(
      about("HTTPS plaintext capture detached: no process maps this libssl"),
      10_000,
    );
    assert(gone.includes(`inode=${oldInode}`), gone);

    // Nothing read twice nor lost, also between the checks above.
    const all = (await rowsOn(agent, NGINX_TLS)).filter((r) => !r.path.startsWith("/warm-"));
    assertEquals(
      all.length,
      24,
      `rows on port ${NGINX_TLS}: ${all.map((r) => r.path).sort()}\n${excerpt(agent)}`,
    );

    // Upgraded while no agent ran: the new agent probes the deleted file nginx runs through map_files.
    await agent.close();
    const third = await installCopy(system, lib);
    assert(third !== newInode);
    agent = await startAgent({ metricsPort: METRICS, config: cfg });
    const via = await agent.waitForLog(
      about("HTTPS plaintext capture attached", String.raw`.*via=/proc/\d+/map_files/`),
      10_000,
    );
    assert(via.includes(`inode=${newInode}`), via);
    await getTls(nginx, paths("deleted", 8));
    await expectTlsRows(agent, paths("deleted", 8));
    const rows = await rowsOn(agent, NGINX_TLS);
    assertEquals(rows.length, 8, `rows on port ${NGINX_TLS} of the second agent`);
  } finally {
    await agent?.close();
    await nginx?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
