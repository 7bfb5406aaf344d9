/**
 * The agent as the systemd unit runs it: the BUILT executable (dist/ja4ebpf, built once here by
 * scripts/build.sh), started through setpriv as an unprivileged user that is not the web server's user, with
 * exactly the unit's capability set (ambient + bounding), against a real nginx (HTTP + HTTPS) and a real
 * ClickHouse. Checks:
 * - with the unit's set it gets `ready` with every capture feature root gets (nginx tracepoint, TC packet
 *   hook, close tracepoint, SSL uprobes on libssl, listening ports discovered), captures a plain and an HTTPS
 *   request, and CapEff equals the set;
 * - the set is the least one: without any one of its capabilities a feature is lost (or start fails); the
 *   documented profile without CAP_SYS_ADMIN loses exactly the HTTPS plaintext capture;
 * - the ClickHouse password (from a 0600 password_file, and from $CREDENTIALS_DIRECTORY as LoadCredential=
 *   provides it) reaches ClickHouse but appears nowhere in the logs, cmdline, environment, /metrics or rows;
 *   a group/world-readable password file stops `run` with an error naming the file and mode;
 * - SIGTERM flushes, exits 0 within 10 s and leaves none of its BPF programs loaded; after SIGKILL the unit's
 *   ExecStopPost command, with the same user and capabilities, removes the tc filter left behind.
 * Needs root, setpriv, curl, bpftool, nginx and clickhouse-server.
 */
import { stringify } from "yaml";
import { assert, assertEquals, assertGreater, assertMatch } from "../../src/testing/asserts.ts";
import type { Row } from "../../src/sink/row.ts";
import { bpfProgIds, parseRows } from "../helpers/agent.ts";
import { startClickHouse } from "../helpers/clickhouse.ts";
import { delay, HarnessError, makeTempDir, requireRoot, requireTool, run } from "../helpers/proc.ts";
import { startNginx } from "../helpers/servers.ts";
import { DEFAULT_TC, tcQuery } from "../../src/bpf/tc.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const BIN = `${ROOT}dist/ja4ebpf`;
const UNIT = `${ROOT}rpm/ja4ebpf.service`;
const NGINX_PORT = 28080;
const NGINX_TLS_PORT = 28443;
const METRICS_PORT = 28435;
const CH = { httpPort: 28123, tcpPort: 28900, interserverPort: 28909 };
/** Not the nginx workers' user (nobody): reading their /proc entries takes a capability, as in production. */
const AGENT_UID = 61999;
/** The program id of the agent's tc filter (default handle) on lo, or undefined. */
const filterOnLo = () => tcQuery("lo", DEFAULT_TC);
const PASSWORD = "s3rv1ce-Pw-" + crypto.randomUUID().replaceAll("-", "");

/** Capability names by number (linux/capability.h). */
const CAP_NAMES = [
  "chown",
  "dac_override",
  "dac_read_search",
  "fowner",
  "fsetid",
  "kill",
  "setgid",
  "setuid",
  "setpcap",
  "linux_immutable",
  "net_bind_service",
  "net_broadcast",
  "net_admin",
  "net_raw",
  "ipc_lock",
  "ipc_owner",
  "sys_module",
  "sys_rawio",
  "sys_chroot",
  "sys_ptrace",
  "sys_pacct",
  "sys_admin",
  "sys_boot",
  "sys_nice",
  "sys_resource",
  "sys_time",
  "sys_tty_config",
  "mknod",
  "lease",
  "audit_write",
  "audit_control",
  "setfcap",
  "mac_override",
  "mac_admin",
  "syslog",
  "wake_alarm",
  "block_suspend",
  "audit_read",
  "perfmon",
  "bpf",
  "checkpoint_restore",
];

/** `AmbientCapabilities=CAP_BPF CAP_PERFMON` → ["bpf", "perfmon"] (sorted). */
function unitCaps(unit: string, key: string): string[] {
  const lines = unit.split("\n").filter((l) => l.startsWith(`${key}=`));
  assertEquals(lines.length, 1, `exactly one ${key}= line in the unit`);
  return lines[0].slice(key.length + 1).trim().split(/\s+/).map((c) => c.replace(/^CAP_/, "").toLowerCase())
    .sort();
}

/** A /proc/PID/status capability mask as sorted names. */
function capNames(hex: string): string[] {
  const v = BigInt("0x" + hex);
  return CAP_NAMES.filter((_, i) => (v >> BigInt(i)) & 1n).sort();
}

function statusField(status: string, key: string): string {
  const m = new RegExp(`^${key}:\\s+(.*)$`, "m").exec(status);
  if (!m) throw new HarnessError(`no ${key} in /proc/PID/status`);
  return m[1];
}

function count(hay: string, needle: string): number {
  return hay.split(needle).length - 1;
}

/**
 * What the `ready` line says is missing compared with a full capture (what root gets on this host): the
 * preferred nginx method, the TC packet hook, the close tracepoint, SSL uprobes on libssl, the test ports.
 */
function missingFeatures(ready: string): string[] {
  const capture: Record<string, string> = {};
  for (const m of (/capture=(.*?) buffer=/.exec(ready)?.[1] ?? "").matchAll(/(\w+)=(\w+)/g)) {
    capture[m[1]] = m[2];
  }
  const ports = (/ports=([\d,]*)/.exec(ready)?.[1] ?? "").split(",").filter(Boolean).map(Number);
  const out: string[] = [];
  if (capture.nginx !== "tracepoint") out.push(`nginx=tracepoint (got ${capture.nginx ?? "none"})`);
  if (capture.packets !== "tc") out.push("packets=tc");
  if (capture.close !== "tracepoint") out.push("close=tracepoint");
  // HTTPS probes attached: on the server's own file (server_symbol, plt) or on libssl (library).
  if (!/https=(?:server_symbol|plt|library):\//.test(ready)) out.push("https probes");
  if (!ports.includes(NGINX_PORT) || !ports.includes(NGINX_TLS_PORT)) out.push("ports discovered");
  return out;
}

async function waitForRows(file: string, pred: (r: Row) => boolean, n: number, ms: number): Promise<Row[]> {
  const deadline = Date.now() + ms;
  let rows: Row[] = [];
  while (Date.now() < deadline) {
    rows = parseRows(await Deno.readTextFile(file).catch(() => "")).filter(pred);
    if (rows.length >= n) break;
    await delay(100);
  }
  return rows;
}

interface Built {
  pid: number;
  stderr(): string;
  waitForLog(re: RegExp, timeoutMs: number): Promise<string>;
  /** Exit code and the milliseconds from the signal to the exit. */
  term(): Promise<{ code: number; ms: number }>;
  status: Promise<Deno.CommandStatus>;
  kill(): Promise<void>;
}

/** dist/ja4ebpf with argv, as AGENT_UID with exactly caps (setpriv), a clean environment plus env. */
function spawnBuilt(home: string, caps: string[], argv: string[], env: Record<string, string> = {}): Built {
  const set = caps.map((c) => `+${c}`).join(",");
  const child = new Deno.Command("setpriv", {
    args: [
      `--reuid=${AGENT_UID}`,
      `--regid=${AGENT_UID}`,
      "--clear-groups",
      `--inh-caps=-all${set ? "," + set : ""}`,
      `--ambient-caps=-all${set ? "," + set : ""}`,
      `--bounding-set=-all${set ? "," + set : ""}`,
      "env",
      "-i",
      `HOME=${home}`,
      "PATH=/usr/bin:/bin",
      "NO_COLOR=1",
      ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      BIN,
      ...argv,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let err = "";
  const drained = (async () => {
    const dec = new TextDecoder();
    for await (const c of child.stderr) err += dec.decode(c, { stream: true });
  })().catch(() => {});
  const status = child.status.then(async (s) => {
    await drained;
    return s;
  });
  let exited = false;
  status.then(() => exited = true);
  return {
    pid: child.pid,
    stderr: () => err,
    async waitForLog(re, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const line = err.split("\n").find((l) => re.test(l));
        if (line !== undefined) return line;
        if (exited) {
          throw new HarnessError(`agent exited (${(await status).code}) before ${re}:\n${err.slice(-3000)}`);
        }
        await delay(50);
      }
      throw new HarnessError(`no agent log line matching ${re} after ${timeoutMs} ms:\n${err.slice(-3000)}`);
    },
    async term() {
      const t0 = performance.now();
      child.kill("SIGTERM");
      const s = await status;
      return { code: s.code, ms: performance.now() - t0 };
    },
    status,
    async kill() {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await status;
    },
  };
}

async function bpftoolProgIds(): Promise<Set<number>> {
  const r = await run(["bpftool", "-j", "prog", "list"]);
  assertEquals(r.code, 0, `bpftool prog list: ${r.stderr}`);
  return new Set((JSON.parse(r.stdout) as { id: number }[]).map((p) => p.id));
}

Deno.test("service: built executable, unit capabilities, secrets, SIGTERM", async (t) => {
  requireRoot("the service test (setpriv, BPF)");
  for (const [tool, pkg] of [["setpriv", "util-linux"], ["curl", "curl"], ["bpftool", "bpftool"]]) {
    requireTool(tool, pkg);
  }
  const unit = await Deno.readTextFile(UNIT);
  const caps = unitCaps(unit, "AmbientCapabilities");
  assertEquals(unitCaps(unit, "CapabilityBoundingSet"), caps, "bounding set = ambient set");

  await t.step("build: scripts/build.sh", async () => {
    const r = await run(["bash", `${ROOT}scripts/build.sh`], { cwd: ROOT, timeoutMs: 300_000 });
    assertEquals(r.code, 0, `build failed:\n${r.stderr.slice(-3000)}`);
    assertMatch(r.stderr, /built dist\/ja4ebpf: /);
  });

  const dir = await makeTempDir("ja4ebpf-service-");
  const home = `${dir}/home`;
  await Deno.mkdir(home);
  await Deno.chown(home, AGENT_UID, AGENT_UID);
  await using nginx = await startNginx({ port: NGINX_PORT, tlsPort: NGINX_TLS_PORT, workers: 2 });
  const ch = await startClickHouse({ ...CH, users: [{ name: "ja4ebpf", password: PASSWORD }] });
  try {
    /**
     * A state dir owned by the agent user with its config; the password goes where `secret` says ("none": no
     * ClickHouse sink).
     */
    const prepare = async (name: string, secret: "file" | "credentials" | "world-readable" | "none") => {
      const d = `${dir}/${name}`;
      await Deno.mkdir(d, { mode: 0o700 });
      const pwFile = `${d}/${secret === "credentials" ? "creds/clickhouse-password" : "clickhouse.password"}`;
      if (secret === "credentials") await Deno.mkdir(`${d}/creds`, { mode: 0o700 });
      if (secret !== "none") {
        await Deno.writeTextFile(pwFile, PASSWORD + "\n");
        await Deno.chmod(pwFile, secret === "world-readable" ? 0o644 : 0o600);
      }
      const cfg = {
        // debug: the configuration is logged too, and must not carry the password either.
        log: { level: "debug" },
        uprobes: { servers: ["nginx"] },
        capture: { hold_ms: 300 },
        output: {
          stdout: false,
          file: { path: `${d}/rows.jsonl` },
          clickhouse: secret === "none" ? { url: "" } : {
            url: ch.url,
            database: "ja4ebpf_service",
            user: "ja4ebpf",
            password_file: secret === "credentials" ? "" : pwFile,
            flush_interval_ms: 200,
            spool_dir: `${d}/spool`,
          },
        },
        metrics: { listen: `127.0.0.1:${METRICS_PORT}` },
      };
      await Deno.writeTextFile(`${d}/config.yaml`, stringify(cfg));
      for (const e of [d, ...[...Deno.readDirSync(d)].map((x) => `${d}/${x.name}`)]) {
        await Deno.chown(e, AGENT_UID, AGENT_UID);
      }
      if (secret === "credentials") await Deno.chown(pwFile, AGENT_UID, AGENT_UID);
      const env: Record<string, string> = secret === "credentials"
        ? { CREDENTIALS_DIRECTORY: `${d}/creds` }
        : {};
      return { d, config: `${d}/config.yaml`, rows: `${d}/rows.jsonl`, env };
    };
    /** SIGTERM: exit 0 within 10 s, and none of progs stays loaded (freeing is deferred a little). */
    const termAndCheck = async (a: Built, progs: number[], what: string) => {
      const { code, ms } = await a.term();
      assertEquals(code, 0, `exit code after SIGTERM; stderr:\n${a.stderr().slice(-2000)}`);
      assert(ms < 10_000, `exited ${Math.round(ms)} ms after SIGTERM`);
      assertMatch(a.stderr(), / INFO stopped /);
      let left: number[] = [];
      const t0 = performance.now();
      while (performance.now() - t0 < 5_000) {
        const loaded = await bpftoolProgIds();
        left = progs.filter((id) => loaded.has(id));
        if (!left.length) break;
        await delay(100);
      }
      assertEquals(left, [], "none of its BPF programs remain after the exit");
      console.log(
        `${what}: exit ${Math.round(ms)} ms after SIGTERM, its ${progs.length} programs gone ` +
          `${Math.round(performance.now() - t0)} ms later`,
      );
    };

    await t.step("a group/world-readable password file: run refuses, naming the file and mode", async () => {
      const p = await prepare("world", "world-readable");
      const a = spawnBuilt(home, caps, ["run", "--config", p.config]);
      const s = await Promise.race([a.status, delay(60_000).then(() => undefined)]);
      if (!s) await a.kill();
      assert(s, "run exited by itself");
      assert(s.code !== 0, `exit code ${s.code}`);
      assertMatch(a.stderr(), new RegExp(`${p.d}/clickhouse\\.password: mode 0644 is group/world-readable`));
      assertEquals(count(a.stderr(), PASSWORD), 0, "the refusal does not print the password");
    });

    let n = 0;
    for (const secret of ["file", "credentials"] as const) {
      await t.step(`uid ${AGENT_UID}, the unit's capabilities, password from ${secret}`, async () => {
        const p = await prepare(`run-${secret}`, secret);
        const a = spawnBuilt(home, caps, ["run", "--config", p.config], p.env);
        let ok = false;
        try {
          const ready = await a.waitForLog(/ INFO ready |"msg":"ready"/, 45_000);
          assertEquals(missingFeatures(ready), [], `full capture with the unit's set: ${ready}`);
          // After the launcher's exec the pid is the Deno runtime's.
          const status = Deno.readTextFileSync(`/proc/${a.pid}/status`);
          assertEquals(statusField(status, "Name"), "deno");
          assertEquals(statusField(status, "Uid").split(/\s+/), Array(4).fill(String(AGENT_UID)));
          assertEquals(capNames(statusField(status, "CapEff")), caps, "CapEff = the unit's set");
          assertEquals(capNames(statusField(status, "CapAmb")), caps, "CapAmb = the unit's set");
          assertEquals(capNames(statusField(status, "CapBnd")), caps, "CapBnd = the unit's set");
          const progs = bpfProgIds(a.pid);
          assertGreater(progs.length, 0, "holds BPF programs");

          const path = `/service-${secret}-${++n}`;
          const base = nginx.url.replace(/\/$/, "");
          const c = await run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", `${base}${path}?q=1`]);
          assertEquals(c.stdout, "200", `curl: ${c.stderr}`);
          const tls = await run([
            "curl",
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            `${nginx.tlsUrl!.replace(/\/$/, "")}${path}-tls`,
          ]);
          assertEquals(tls.stdout, "200", `curl https: ${tls.stderr}`);
          const rows = await waitForRows(p.rows, (r) => r.path.startsWith(path), 2, 10_000);
          const plain = rows.filter((r) => r.path === path);
          const https = rows.filter((r) => r.path === `${path}-tls`);
          assertEquals(plain.length, 1, `one row for ${path}; stderr:\n${a.stderr().slice(-2000)}`);
          assertEquals([plain[0].server, plain[0].dst_port, plain[0].method], ["nginx", NGINX_PORT, "GET"]);
          assertEquals(plain[0].capture, "tracepoint");
          assertEquals(https.length, 1, `one row for ${path}-tls; stderr:\n${a.stderr().slice(-2000)}`);
          assertEquals([https[0].capture, https[0].dst_port], ["ssl_uprobe", NGINX_TLS_PORT]);
          assertMatch(
            https[0].ja4,
            /^t13i\d{4}h1_[0-9a-f]{12}_[0-9a-f]{12}$/,
            "HTTPS row has its JA4 (IP: no SNI)",
          );
          assertEquals((await Deno.stat(p.rows)).mode! & 0o777, 0o600, "rows file mode");

          // The password works: the rows reach ClickHouse as user ja4ebpf.
          let inCh = "";
          const chDeadline = Date.now() + 15_000;
          while (Date.now() < chDeadline) {
            inCh = await ch.query(`SELECT count() FROM ja4ebpf_service.requests WHERE path LIKE '${path}%'`)
              .catch(() => "");
            if (inCh.trim() === "2") break;
            await delay(200);
          }
          assertEquals(inCh.trim(), "2", `rows in ClickHouse; stderr:\n${a.stderr().slice(-2000)}`);

          const metrics = await (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
          assertMatch(metrics, /^ja4ebpf_rows_captured_total /m);
          const places: [string, string][] = [
            ["stderr", a.stderr()],
            ["/proc/PID/cmdline", Deno.readTextFileSync(`/proc/${a.pid}/cmdline`)],
            ["/proc/PID/environ", Deno.readTextFileSync(`/proc/${a.pid}/environ`)],
            ["/metrics", metrics],
            ["rows file", await Deno.readTextFile(p.rows)],
          ];
          for (const [where, text] of places) {
            assertGreater(text.length, 0, `${where} read`);
            assertEquals(count(text, PASSWORD), 0, `password in ${where}`);
          }
          assertMatch(a.stderr(), / DEBUG configuration /, "the logged configuration was checked too");
          if (secret === "credentials") {
            assertMatch(places[2][1], /CREDENTIALS_DIRECTORY=/, "environ read is the agent's");
          }

          // A request answered just before SIGTERM is still held for correlation: the stop flushes it.
          const last = await run([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            `${base}${path}-last`,
          ]);
          assertEquals(last.stdout, "200", `curl: ${last.stderr}`);
          await termAndCheck(a, progs, secret);
          const after = await Deno.readTextFile(p.rows);
          assertEquals(
            parseRows(after).filter((r) => r.path === `${path}-last`).length,
            1,
            "flushed to the file",
          );
          assertEquals(
            (await ch.query(`SELECT count() FROM ja4ebpf_service.requests WHERE path = '${path}-last'`))
              .trim(),
            "1",
            "flushed to ClickHouse",
          );
          assertEquals(count(after, PASSWORD), 0, "rows file after the flush");
          ok = true;
        } finally {
          await a.kill();
          if (!ok) console.error(`agent stderr:\n${a.stderr().slice(-4000)}`);
        }
      });
    }

    await t.step(
      "ExecStopPost: after SIGKILL the unit's cleanup, with the unit's capabilities, removes the tc filter",
      async () => {
        const stopPost = unit.match(/^ExecStopPost=-?(\S+) (.*)$/m);
        assert(stopPost, "the unit has an ExecStopPost");
        assertEquals(stopPost[1], "/usr/bin/ja4ebpf", "it runs the installed executable");
        const p = await prepare("killed", "none");
        const a = spawnBuilt(home, caps, ["run", "--config", p.config]);
        try {
          await a.waitForLog(/ INFO ready /, 45_000);
        } finally {
          await a.kill(); // SIGKILL: no detach
        }
        const ours = filterOnLo();
        assert(ours, "the killed agent's tc filter is still on lo");
        const argv = stopPost[2].split(" ").map((w) => w === "/etc/ja4ebpf/config.yaml" ? p.config : w);
        const c = spawnBuilt(home, caps, argv);
        const s = await Promise.race([c.status, delay(60_000).then(() => undefined)]);
        if (!s) await c.kill();
        assertEquals(s?.code, 0, `${stopPost[2]}:\n${c.stderr()}`);
        assertMatch(c.stderr(), new RegExp(`removed tc filter handle 0x4a34 on lo \\(program ${ours}\\)`));
        assertEquals(filterOnLo(), undefined, "nothing of ours left on lo");
      },
    );

    /** Starts with `set`; the ready line, or undefined when start failed (exit ≠ 0). Stops it. */
    const tryCaps = async (name: string, set: string[]): Promise<{ ready?: string; stderr: string }> => {
      const p = await prepare(name, "none");
      const a = spawnBuilt(home, set, ["run", "--config", p.config]);
      try {
        const ready = await a.waitForLog(/ INFO ready /, 45_000).catch(() => undefined);
        if (ready === undefined) {
          const s = await Promise.race([a.status, delay(5_000).then(() => undefined)]);
          assert(s && s.code !== 0, `neither ready nor a failed exit:\n${a.stderr().slice(-2000)}`);
          return { stderr: a.stderr() };
        }
        const status = Deno.readTextFileSync(`/proc/${a.pid}/status`);
        assertEquals(capNames(statusField(status, "CapEff")), [...set].sort(), `${name}: CapEff`);
        await termAndCheck(a, bpfProgIds(a.pid), name);
        return { ready, stderr: a.stderr() };
      } finally {
        await a.kill();
      }
    };

    await t.step("least set: without any one of the unit's capabilities a feature is lost", async () => {
      for (const c of caps) {
        const r = await tryCaps(`without-${c}`, caps.filter((x) => x !== c));
        const lost = r.ready === undefined ? ["start fails"] : missingFeatures(r.ready);
        console.log(`without CAP_${c.toUpperCase()}: ${lost.join(", ")}`);
        assertGreater(lost.length, 0, `CAP_${c.toUpperCase()} is needed for something: ${r.ready}`);
      }
    });

    await t.step("profile without CAP_SYS_ADMIN (CAP_BPF + CAP_PERFMON): loses exactly HTTPS", async () => {
      assert(caps.includes("sys_admin"), "the unit grants CAP_SYS_ADMIN");
      const set = [...caps.filter((x) => x !== "sys_admin"), "bpf", "perfmon"];
      const r = await tryCaps("no-sys-admin", set);
      assert(r.ready, `starts:\n${r.stderr.slice(-2000)}`);
      assertEquals(missingFeatures(r.ready), ["https probes"], r.ready);
      assertMatch(r.stderr, /SSL uprobe attach failed .*Permission denied/, "the uprobe refusal is logged");
    });
  } finally {
    await ch.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
