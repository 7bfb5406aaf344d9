/**
 * libapr replaced under a running Apache (what a package upgrade does): Apache loads its own copy of Debian's
 * libapr-1.so.0 from a temp dir (LD_LIBRARY_PATH), the agent probes it; the file is then replaced atomically
 * (new inode). The agent must probe the new file (log: re-attached) and keep the probes of the old inode
 * while Apache still maps it (a graceful restart keeps the master's mappings); a fresh Apache maps the new
 * file and is captured too, after which the old inode's probes are detached. An agent started after an
 * upgrade probes the deleted file Apache still runs. Every request is one row.
 *
 * Needs root and Debian's apache2. Rows are filtered by this file's port: other agents and servers may run
 * on the host at the same time.
 */
import { assert, assertEquals } from "../../src/testing/asserts.ts";
import { findLibrary, mappedFiles } from "../../src/bpf/elf.ts";
import { type RunningAgent, startAgent } from "../helpers/agent.ts";
import { startApache, type WebServer } from "../helpers/servers.ts";
import { curl } from "../helpers/clients.ts";
import { HarnessError, makeTempDir, requireRoot } from "../helpers/proc.ts";

const APACHE = 27081;
const METRICS = 27082;
const LIBAPR = "libapr-1.so.0";

/** Apache with `dir` first on its library path (its master and children map dir/libapr-1.so.0). */
async function apacheWith(dir: string): Promise<WebServer> {
  const prev = Deno.env.get("LD_LIBRARY_PATH");
  Deno.env.set("LD_LIBRARY_PATH", dir);
  try {
    return await startApache({ port: APACHE, workers: 2, http2: false });
  } finally {
    if (prev === undefined) Deno.env.delete("LD_LIBRARY_PATH");
    else Deno.env.set("LD_LIBRARY_PATH", prev);
  }
}

/** Copies the system libapr to `to` through a temp name and a rename: a new inode, never a half file. */
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
    const all = (await agent.rows()).filter((r) => r.dst_port === APACHE && !r.path.startsWith("/warm-"));
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
