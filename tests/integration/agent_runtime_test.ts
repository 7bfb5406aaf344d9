/**
 * The agent's runtime behaviour as a process: clean detach on SIGTERM (and after SIGKILL + restart) without
 * touching a foreign tc filter, rows into a real ClickHouse equal to the file sink, no secret in any output or
 * log, the metrics identity at every scrape under wrk load, SIGHUP reload, and config errors at start. Needs
 * root, nginx, clickhouse-server, wrk, curl, bpftool and tc. Everything is filtered by this file's ports and
 * by the agent's own BPF program ids: other agents may run on the host at the same time.
 */
import { assert, assertEquals, assertGreater, assertMatch } from "../../src/testing/asserts.ts";
import { startClickHouse } from "../helpers/clickhouse.ts";
import type { Row } from "../../src/sink/row.ts";
import { decodeRow } from "../../src/sink/ch_schema.ts";
import { identityFromScrape } from "../../src/metrics/ledger.ts";
import { parsePrometheusText } from "../../src/metrics/registry.ts";
import {
  agentConfig,
  bpfProgIds,
  type ConfigPatch,
  MAIN_TS,
  type RunningAgent,
  startAgent,
} from "../helpers/agent.ts";
import { createNetns } from "../helpers/netns.ts";
import { Agent, StartAbortedError } from "../../src/agent/agent.ts";
import { loadConfig, parseConfig } from "../../src/config/config.ts";
import { claimTc, DEFAULT_TC, tcQuery } from "../../src/bpf/tc.ts";
import { rowsGoNowhere } from "../../src/cli/run.ts";
import { configureLog, setLogSink } from "../../src/log.ts";
import { startNginx } from "../helpers/servers.ts";
import { curl, wrk } from "../helpers/clients.ts";
import { delay, makeTempDir, requireTool, run, runOk, waitUntil } from "../helpers/proc.ts";
import { stringify } from "yaml";

const NGINX = 24080;
const CH_HTTP = 24123;
const CH_TCP = 24900;
const CH_INTER = 24909;
/** A foreign filter on lo's clsact ingress the agent must leave alone (not our priority 0x4a34). */
const FOREIGN_PRIO = 40123;

function excerpt(agent: RunningAgent): string {
  return agent.stderr().split("\n").slice(-40).join("\n");
}

// ---------------------------------------------------------------------------------------------------------
// Clean exit

/** Program names the BPF object defines (docs/bpf.md, "Programs" table). */
async function documentedPrograms(): Promise<Set<string>> {
  const md = await Deno.readTextFile(new URL("../../docs/bpf.md", import.meta.url));
  const names = new Set<string>();
  for (const line of md.split("\n")) {
    const first = line.split("|")[1] ?? "";
    for (const m of first.matchAll(/`(\w+)`/g)) names.add(m[1]);
  }
  return names;
}

interface Prog {
  id: number;
  name: string;
}

async function loadedPrograms(): Promise<Prog[]> {
  const out = await runOk([requireTool("bpftool", "bpftool"), "-j", "prog", "show"]);
  return (JSON.parse(out) as { id: number; name?: string }[]).map((p) => ({ id: p.id, name: p.name ?? "" }));
}

async function loIngress(): Promise<string> {
  return await runOk([requireTool("tc", "iproute2"), "filter", "show", "dev", "lo", "ingress"]);
}

/** Program ids of the bpf filters on lo ingress. */
async function tcProgIds(): Promise<number[]> {
  return [...(await loIngress()).matchAll(/ bpf .*? id (\d+)/g)].map((m) => Number(m[1]));
}

/** Removes the foreign filter (no error when it is not there). */
async function removeForeignFilter(): Promise<void> {
  await run([
    requireTool("tc", "iproute2"),
    "filter",
    "del",
    "dev",
    "lo",
    "ingress",
    "prio",
    String(FOREIGN_PRIO),
  ]);
}

async function addForeignFilter(): Promise<void> {
  const tc = requireTool("tc", "iproute2");
  await run([tc, "qdisc", "add", "dev", "lo", "clsact"]); // EEXIST when another tool put it there: fine
  await removeForeignFilter();
  await runOk([
    tc,
    "filter",
    "add",
    "dev",
    "lo",
    "ingress",
    "prio",
    String(FOREIGN_PRIO),
    "u32",
    "match",
    "u32",
    "0",
    "0",
    "classid",
    "1:1",
  ]);
}

async function foreignFilterThere(): Promise<boolean> {
  return new RegExp(`pref ${FOREIGN_PRIO} u32`).test(await loIngress());
}

/** None of ids is loaded or referenced by a tc filter on lo (program release is asynchronous: poll). */
async function assertGone(ids: number[], what: string): Promise<void> {
  let left: number[] = [];
  let onTc: number[] = [];
  try {
    await waitUntil(
      async () => {
        const loaded = new Set((await loadedPrograms()).map((p) => p.id));
        left = ids.filter((id) => loaded.has(id));
        const tcIds = new Set(await tcProgIds());
        onTc = ids.filter((id) => tcIds.has(id));
        return left.length === 0 && onTc.length === 0;
      },
      5000,
      what,
    );
  } catch {
    throw new Error(
      `${what}: programs still loaded ${left}, still on lo ingress ${onTc}\n${await loIngress()}`,
    );
  }
}

Deno.test("agent runtime: SIGTERM detaches everything; SIGKILL leftovers are cleaned by the next run", async (t) => {
  const documented = await documentedPrograms();
  await addForeignFilter();
  const dir = await makeTempDir("ja4ebpf-agent-exit-");
  try {
    await t.step(
      "SIGTERM: exit 0, no program or tc filter of ours left, foreign filter untouched",
      async () => {
        const agent = await startAgent({ dir });
        const ids = agent.progIds();
        assertGreater(ids.length, 0, "the agent holds BPF programs");
        const progs = (await loadedPrograms()).filter((p) => ids.includes(p.id));
        for (const p of progs) {
          assert(documented.has(p.name), `program ${p.name} is documented in docs/bpf.md`);
        }
        assert(
          progs.some((p) => p.name === "tc_ingress"),
          `tc_ingress among ${progs.map((p) => p.name)}`,
        );
        const exit = await agent.stop("SIGTERM");
        assertEquals(exit, { code: 0, signal: null }, `exit after SIGTERM:\n${excerpt(agent)}`);
        assertMatch(agent.stderr(), / INFO stopped /);
        await assertGone(ids, "after SIGTERM");
        assert(await foreignFilterThere(), `foreign u32 filter kept:\n${await loIngress()}`);
      },
    );

    await t.step("SIGKILL, restart, SIGTERM: nothing of either run left", async () => {
      const first = await startAgent({ dir });
      const ids1 = first.progIds();
      const tcId = (await loadedPrograms()).find((p) => ids1.includes(p.id) && p.name === "tc_ingress")?.id;
      assert(tcId, "first run's tc_ingress");
      assertEquals((await first.stop("SIGKILL")).signal, "SIGKILL");
      // A classic tc filter keeps its program alive past the process: the next run must replace it.
      const second = await startAgent({ dir });
      const ids2 = second.progIds();
      assertEquals(await second.stop("SIGTERM"), { code: 0, signal: null }, excerpt(second));
      await assertGone([...ids1, ...ids2], "after SIGKILL + restart + SIGTERM");
      assert(await foreignFilterThere(), `foreign u32 filter kept:\n${await loIngress()}`);
    });
  } finally {
    await removeForeignFilter();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// ---------------------------------------------------------------------------------------------------------
// ClickHouse, privacy, metrics identity, SIGHUP

const SECRETS = ["S3cretCookieVal", "S3cretCookieTwo", "S3cretBearerTok", "S3cretQueryTok"];

Deno.test("agent runtime: ClickHouse rows equal the file sink, no secret anywhere, identity under load, SIGHUP", async (t) => {
  await using nginx = await startNginx({ port: NGINX, workers: 2 });
  const ch = await startClickHouse({ httpPort: CH_HTTP, tcpPort: CH_TCP, interserverPort: CH_INTER });
  try {
    const agentCfg = {
      output: {
        clickhouse: { url: ch.url, database: "ja4e2e", table: "requests", flush_interval_ms: 200 },
      },
      log: { level: "info" },
    };
    await using agent = await startAgent({ config: agentCfg });

    // Scrape all along: the identity must hold at every single scrape.
    let scrapes = 0;
    /** ja4ebpf_rows_captured_total at each scrape, in order. */
    const capturedAt: number[] = [];
    let wrkRequests = 0;
    let lastScrape = "";
    let stopScraping = false;
    const bad: string[] = [];
    const scraper = (async () => {
      while (!stopScraping) {
        lastScrape = await agent.scrape();
        const id = identityFromScrape(lastScrape);
        scrapes++;
        capturedAt.push(id.captured);
        if (!(id.captured === id.resolved)) bad.push(`captured ${id.captured} resolved ${id.resolved}`);
        await delay(50);
      }
    })();

    await t.step("SIGHUP with a changed log.level is applied and counters are kept", async () => {
      await curl(["-o", "/dev/null", `${nginx.url}before-hup`]);
      await agent.waitForRows((r) => r.path === "/before-hup", 1);
      const before = (await agent.metrics()).get("ja4ebpf_rows_captured_total") ?? 0;
      assertGreater(before, 0, "a row captured before the reload");
      const raw = await Deno.readTextFile(agent.configPath);
      await Deno.writeTextFile(agent.configPath, raw.replace(/level: info/, "level: debug"));
      agent.signal("SIGHUP");
      const line = await agent.waitForLog(/configuration reloaded/);
      assertMatch(line, /applied=[^ ]*log\.level/);
      const after = (await agent.metrics()).get("ja4ebpf_rows_captured_total") ?? 0;
      assert(after >= before, `captured counter not reset: ${before} → ${after}`);
    });

    await t.step("secrets in cookies, Authorization and the query go nowhere", async () => {
      const r = await curl([
        "-o",
        "/dev/null",
        "-b",
        `sid=${SECRETS[0]}; pref=${SECRETS[1]}`,
        "-H",
        `Authorization: Bearer ${SECRETS[2]}`,
        `${nginx.url}private?token=${SECRETS[3]}`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      const [row] = await agent.waitForRows((x) => x.path === "/private", 1);
      assert(/^ge11cn/.test(row.ja4h), `JA4H with cookie, without referer: ${row.ja4h}`);
    });

    await t.step("wrk load: identity holds at every scrape", async () => {
      // One connection for one second: ~50k rows, which the sinks hold without dropping even while the
      // ClickHouse sink lags (its memory queue is 64 MiB). Its sustained rate is a benchmark's business
      // (bench/pipeline_bench.ts): a faster load here would test that limit, not the identity.
      const w = await wrk({ url: `${nginx.url}load`, connections: 1, duration: 1 });
      assertGreater(w.requests, 100, "wrk made requests");
      wrkRequests = w.requests;
      // Keep scraping while the agent takes in the load's backlog: until two scrapes after wrk ended show
      // the captured count standing still.
      const atEnd = capturedAt.length;
      await waitUntil(
        () => {
          const after = capturedAt.slice(atEnd);
          return scrapes > 10 && after.length >= 2 && after.at(-1) === after.at(-2);
        },
        30_000,
        "the agent took in the load",
        () => Promise.resolve(`captured at the scrapes since wrk ended: ${capturedAt.slice(atEnd)}`),
      );
      assertGreater(scrapes, 10, "scrapes during the load");
      assertEquals(bad, [], "scrapes where captured != shipped + spooled + quarantined + dropped");
    });
    stopScraping = true;
    await scraper;

    await t.step("SIGHUP to log.level warn silences info lines (the level is really applied)", async () => {
      const raw = await Deno.readTextFile(agent.configPath);
      // Also a key only a restart applies: its warning, the one line level warn lets through, shows that the
      // reload has run.
      const changed = raw.replace(/level: debug/, "level: warn").replace(/hold_ms: 300/, "hold_ms: 301");
      assert(changed.includes("hold_ms: 301"), `capture.hold_ms in the config:\n${raw}`);
      await Deno.writeTextFile(agent.configPath, changed);
      // Let the agent finish the load's backlog first, so the signal is handled promptly.
      let captured = -1;
      for (let i = 0; i < 50; i++) {
        const now = (await agent.metrics()).get("ja4ebpf_rows_captured_total") ?? 0;
        if (now === captured) break;
        captured = now;
        await delay(300);
      }
      const before = agent.stderr().length;
      const t0 = Date.now();
      agent.signal("SIGHUP");
      await agent.waitForLog(/configuration changes need a restart to take effect/);
      // Rows still spooled at a stop are kept for the next start, not lost; this test compares ClickHouse
      // with the file sink, so it lets the sink deliver the load's backlog first.
      await waitUntil(
        async () => (await agent.metrics()).get("ja4ebpf_rows_spooled") === 0,
        90_000,
        "the ClickHouse sink delivered every row",
      );
      assertEquals(await agent.stop(), { code: 0, signal: null }, `clean exit:\n${excerpt(agent)}`);
      console.log(`reload and stop after SIGHUP took ${Date.now() - t0} ms`);
      const later = agent.stderr().slice(before);
      assertEquals(
        later.match(/ INFO .*/g) ?? [],
        [],
        "no info line (reloaded, stopping, stopped) at level warn",
      );
      assertGreater(captured, 100, "rows counted before the second reload");
    });
    const fileRows = (await agent.rows()).filter((r) => r.dst_port === NGINX);
    const chRows = (await ch.query(
      `SELECT * FROM ja4e2e.requests WHERE dst_port = ${NGINX} FORMAT JSONEachRow`,
    )).split("\n").filter((l) => l.trim()).map((l) => decodeRow(JSON.parse(l)));

    const m = parsePrometheusText(lastScrape);
    const kernelDrops = [...m].filter(([k, v]) =>
      (k.startsWith("ja4ebpf_bpf_drops_total") || k.startsWith("ja4ebpf_rows_dropped_total")) && v > 0
    );
    console.log(
      `wrk: ${wrkRequests} requests, ${fileRows.filter((r) => r.path === "/load").length} /load rows, ` +
        `kernel drops ${JSON.stringify(kernelDrops)}, ${scrapes} scrapes`,
    );

    await t.step("ClickHouse holds exactly the file sink's rows", () => {
      assertGreater(fileRows.length, 100, "rows in the file sink");
      const key = (r: Row) => JSON.stringify(Object.entries(r).sort(([a], [b]) => a.localeCompare(b)));
      const a = fileRows.map(key).sort();
      const b = chRows.map(key).sort();
      assertEquals(b.length, a.length, "row count");
      const diff = a.filter((x, i) => x !== b[i]).slice(0, 3);
      assertEquals(
        diff,
        [],
        `first differing rows (file side); ClickHouse side: ${b.filter((x, i) => x !== a[i]).slice(0, 3)}`,
      );
    });

    await t.step("no secret in ClickHouse, the file sink or the agent's log", async () => {
      const all = await ch.query("SELECT * FROM ja4e2e.requests FORMAT TSV");
      const file = await Deno.readTextFile(agent.rowsPath);
      const private_ = fileRows.find((r) => r.path === "/private");
      assert(private_, "the request with secrets has a row");
      for (const s of SECRETS) {
        assert(!all.includes(s), `${s} in ClickHouse`);
        assert(!file.includes(s), `${s} in the file sink`);
        assert(!agent.stderr().includes(s), `${s} in the agent's stderr`);
      }
    });
  } finally {
    await ch.close();
  }
});

// ---------------------------------------------------------------------------------------------------------
// Config errors

Deno.test("agent runtime: a config typo makes run exit 2 naming file, line and key", async () => {
  const dir = await makeTempDir("ja4ebpf-agent-cfg-");
  try {
    const path = `${dir}/typo.yaml`;
    const text = stringify({ capture: { hold_ms: 100 }, output: { stdout: false } }) +
      "metrics:\n  enabled: true\n  lisen: 127.0.0.1:24435\n";
    await Deno.writeTextFile(path, text);
    const line = text.split("\n").findIndex((l) => l.includes("lisen")) + 1;
    const r = await run([Deno.execPath(), "run", "-A", MAIN_TS, "run", "--config", path], {
      env: { NO_COLOR: "1" },
      timeoutMs: 30_000,
    });
    assertEquals(r.code, 2, `exit code; stderr: ${r.stderr}`);
    assertMatch(r.stderr, new RegExp(`typo\\.yaml:${line}: metrics\\.lisen: unknown key`));
    assertMatch(r.stderr, /did you mean listen/);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// ---------------------------------------------------------------------------------------------------------
// Nothing left behind: tc ownership, sweeps, a stop during start-up

const filterOn = (iface: string, handle: number) => tcQuery(iface, { handle, priority: handle });

/** A config file in dir (the test base config plus patch); returns its path. */
async function writeConfig(
  dir: string,
  name: string,
  metricsPort: number,
  patch: ConfigPatch,
): Promise<string> {
  const path = `${dir}/${name}.yaml`;
  await Deno.writeTextFile(path, stringify(agentConfig(dir, metricsPort, patch)));
  return path;
}

Deno.test("agent runtime: a stop during start-up leaves nothing attached, whenever it comes", async () => {
  const handle = 0x4a41;
  const dir = await makeTempDir("ja4ebpf-agent-abort-");
  const outcomes: string[] = [];
  // SIGTERM is handled between steps of the start-up: at once (the sinks are opening), once the plan is made
  // (nothing attached yet), right after the first tc filter went on, and after ready.
  const points: (RegExp | null)[] = [null, /hook attached/, /packet capture attached/, / ready /];
  try {
    for (const point of points) {
      const cfg = parseConfig(stringify(agentConfig(dir, 24438, {
        uprobes: { servers: ["nginx"] },
        capture: { interfaces: ["lo"], tc_handle: handle },
        metrics: { enabled: false },
      })));
      const agent = new Agent(cfg);
      let stopping: Promise<void> | undefined;
      const prev = setLogSink((line) => {
        prev(line);
        if (point && !stopping && point.test(line)) stopping = agent.stop();
      });
      let outcome: unknown;
      try {
        const started = agent.start().then(() => "ready", (e) => e);
        if (!point) stopping = agent.stop();
        outcome = await started;
        await stopping;
      } finally {
        setLogSink(prev);
      }
      const what = `stop at ${point ?? "once"}`;
      outcomes.push(`${what}: ${outcome instanceof Error ? outcome.name : outcome}`);
      assert(stopping, `${what}: the point was reached`);
      assert(
        outcome === "ready" || outcome instanceof StartAbortedError,
        `${what}: start ended with ${outcome}`,
      );
      assertEquals(filterOn("lo", handle), undefined, `${what} (${outcome}): tc filter left on lo`);
      assertEquals(bpfProgIds(Deno.pid), [], `${what} (${outcome}): BPF programs still held`);
      // The claim went with the stop: the handle can be taken again.
      claimTc({ handle, priority: handle }).release();
    }
    console.log(outcomes.join("; "));
    assertEquals(
      outcomes.filter((o) => o.endsWith("StartAbortedError")).length,
      3,
      "the three stops before ready abort the start",
    );
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("agent runtime: SIGKILL leftovers are swept on every interface; cleanup spares a live agent", async (t) => {
  await using ns = await createNetns("ja4ops");
  const dir = await makeTempDir("ja4ebpf-agent-sweep-");
  await addForeignFilter();
  const handle = DEFAULT_TC.handle;
  try {
    await t.step("start: filters of a killed agent go, also where this run does not attach", async () => {
      const first = await startAgent({ dir, config: { capture: { interfaces: ["lo", ns.hostIf] } } });
      assertEquals((await first.stop("SIGKILL")).signal, "SIGKILL");
      assert(filterOn(ns.hostIf, handle), `the killed agent's filter stays on ${ns.hostIf}`);
      assert(filterOn("lo", handle), "and on lo");
      const second = await startAgent({ dir, config: { capture: { interfaces: ["lo"] } } });
      try {
        assertEquals(filterOn(ns.hostIf, handle), undefined, `swept from ${ns.hostIf}:\n${excerpt(second)}`);
        assertMatch(second.stderr(), new RegExp(`removed tc filters left by an agent .*${ns.hostIf}:0x4a34`));
        assert(filterOn("lo", handle), "the running agent's own filter on lo");
      } finally {
        assertEquals((await second.stop("SIGKILL")).signal, "SIGKILL");
      }
    });

    await t.step("cleanup (ExecStopPost) removes what a killed agent left; exit 0", async () => {
      assert(filterOn("lo", handle), "left by the killed agent");
      const r = await run([
        Deno.execPath(),
        "run",
        "-A",
        MAIN_TS,
        "cleanup",
        "--config",
        `${dir}/config.yaml`,
      ], {
        env: { NO_COLOR: "1" },
        timeoutMs: 60_000,
      });
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stderr, /removed tc filter handle 0x4a34 on lo/);
      assertEquals(filterOn("lo", handle), undefined, "swept from lo");
      assert(await foreignFilterThere(), `foreign u32 filter kept:\n${await loIngress()}`);
    });

    await t.step("cleanup leaves a live agent's filters alone", async () => {
      const live = await startAgent({ dir, config: { capture: { interfaces: ["lo"] } } });
      try {
        const r = await run([Deno.execPath(), "run", "-A", MAIN_TS, "cleanup", "--config", live.configPath], {
          env: { NO_COLOR: "1" },
          timeoutMs: 60_000,
        });
        assertEquals(r.code, 0, r.stderr);
        assertMatch(
          r.stderr,
          new RegExp(`agent \\(pid ${live.pid}\\) owns tc filter handle 0x4a34.*left alone`),
        );
        assert(filterOn("lo", handle), "the live agent's filter stays");
      } finally {
        assertEquals(await live.stop("SIGTERM"), { code: 0, signal: null }, excerpt(live));
      }
      assertEquals(filterOn("lo", handle), undefined, "gone with its SIGTERM");
    });
  } finally {
    await removeForeignFilter();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("agent runtime: a second agent with the same tc handle is refused; with its own it runs beside", async () => {
  const dir = await makeTempDir("ja4ebpf-agent-two-");
  const lo = { capture: { interfaces: ["lo"] } };
  try {
    await using first = await startAgent({ dir, config: lo });
    const same = await writeConfig(dir, "same", 24436, lo);
    const r = await run([Deno.execPath(), "run", "-A", MAIN_TS, "run", "--config", same], {
      env: { NO_COLOR: "1" },
      timeoutMs: 60_000,
    });
    assertEquals(r.code, 1, `refused:\n${r.stderr}`);
    assertMatch(
      r.stderr,
      new RegExp(`another ja4ebpf agent \\(pid ${first.pid}\\) owns tc filter handle 0x4a34`),
    );
    const firstFilter = filterOn("lo", DEFAULT_TC.handle);
    assert(firstFilter && first.progIds().includes(firstFilter), "the first agent's filter is untouched");

    await using second = await startAgent({
      dir: await makeTempDir("ja4ebpf-agent-two-b-"),
      metricsPort: 24437,
      config: { capture: { interfaces: ["lo"], tc_handle: 0x4a42 } },
    });
    const secondFilter = filterOn("lo", 0x4a42);
    assert(secondFilter && second.progIds().includes(secondFilter), "the second agent has its own filter");
    assertEquals(filterOn("lo", DEFAULT_TC.handle), firstFilter, "and the first one still has its");
    assertEquals(await second.stop(), { code: 0, signal: null }, excerpt(second));
    assertEquals(filterOn("lo", 0x4a42), undefined);
    assertEquals(filterOn("lo", DEFAULT_TC.handle), firstFilter, "the second's stop left the first's filter");
    await Deno.remove(second.dir, { recursive: true }).catch(() => {});
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

// ---------------------------------------------------------------------------------------------------------
// Operations that do what they say

Deno.test("agent runtime: a config that sends rows nowhere is refused naming the file; the packaged one keeps rows", async () => {
  const packaged = new URL("../../rpm/config.yaml", import.meta.url);
  const cfg = parseConfig(await Deno.readTextFile(packaged), "rpm/config.yaml");
  assertEquals(rowsGoNowhere(cfg), undefined, "the packaged config has an output");
  assert(
    cfg.output.file.path.startsWith("/var/log/ja4ebpf/"),
    `rows in LogsDirectory: ${cfg.output.file.path}`,
  );

  const dir = await makeTempDir("ja4ebpf-agent-nowhere-");
  try {
    const path = `${dir}/nowhere.yaml`;
    await Deno.writeTextFile(path, stringify({ output: { stdout: false }, metrics: { enabled: false } }));
    const r = await run([Deno.execPath(), "run", "-A", MAIN_TS, "run", "--config", path], {
      env: { NO_COLOR: "1" },
      timeoutMs: 30_000,
    });
    assertEquals(r.code, 2, `exit code; stderr: ${r.stderr}`);
    assertMatch(r.stderr, /nowhere\.yaml: no output for rows: output\.stdout is false/);
    assert(!/ready/.test(r.stderr), "nothing started");
    // --validate ("exit 0 if it can run") agrees with run.
    const v = await run([Deno.execPath(), "run", "-A", MAIN_TS, "--validate", "--config", path], {
      env: { NO_COLOR: "1" },
      timeoutMs: 60_000,
    });
    assertEquals(v.code, 1, `--validate exit code; stdout: ${v.stdout}\n${v.stderr}`);
    assertMatch(v.stdout, /CANNOT RUN: .*no output for rows/);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("agent runtime: SIGHUP applies logging and privacy, names every other change as needing a restart", async () => {
  const dir = await makeTempDir("ja4ebpf-agent-reload-");
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  try {
    const base = {
      capture: { hold_ms: 300 },
      output: { stdout: false, file: { path: `${dir}/rows.jsonl` }, clickhouse: { batch_rows: 20000 } },
      log: { level: "info" },
    };
    const path = `${dir}/config.yaml`;
    await Deno.writeTextFile(path, stringify(base));
    const agent = new Agent(await loadConfig(path));
    await Deno.writeTextFile(
      path,
      stringify({
        ...base,
        capture: { hold_ms: 900 },
        output: { ...base.output, clickhouse: { batch_rows: 500, timeout_ms: 5000 } },
        privacy: { strip_query: false },
        log: { level: "debug" },
      }),
    );
    await agent.reload(path);
    const reloaded = lines.find((l) => /configuration reloaded/.test(l)) ?? "";
    assertMatch(reloaded, /applied=privacy\.strip_query,log\.level /);
    assertMatch(
      reloaded,
      /needs_restart=capture\.hold_ms,output\.clickhouse\.batch_rows,output\.clickhouse\.timeout_ms/,
    );
    assert(
      lines.some((l) => / WARN configuration changes need a restart .*capture\.hold_ms/.test(l)),
      lines.join("\n"),
    );
    assertEquals(agent.cfg.log.level, "debug", "applied");
    assertEquals(agent.cfg.capture.hold_ms, 300, "not applied: the running value stays");
    assertEquals(agent.correlator.opts.holdMs, 300, "the correlator still holds rows 300 ms");
  } finally {
    setLogSink(prev);
    configureLog({ level: "info" });
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
