/**
 * The metrics endpoint under load: rows flow through a real Correlator and the row ledger while a loop
 * scrapes /metrics over HTTP (port 19435); the accounting identity must hold at every scrape.
 */
import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertStringIncludes,
} from "../../src/testing/asserts.ts";
import { Correlator, type Tuple } from "../../src/correlate/correlator.ts";
import { AgentMetrics } from "../../src/metrics/agent.ts";
import { emptyRow } from "../../src/sink/row.ts";
import { identityFromScrape } from "../../src/metrics/ledger.ts";
import { parsePrometheusText } from "../../src/metrics/registry.ts";
import { parseListen, startMetricsServer } from "../../src/metrics/server.ts";

const PORT = 19435;
const URL_BASE = `http://127.0.0.1:${PORT}`;

Deno.test("metrics endpoint: identity holds at every scrape under load", async () => {
  let fakeNow = Date.now();
  const m = new AgentMetrics({}, () => fakeNow);
  // Room for every connection of one linger period, so closed ones leave by linger (not LRU) on a fast machine.
  const corr = new Correlator({ holdMs: 50, closeLingerMs: 100, maxConnections: 65_536 });
  m.watchCorrelator(() => corr.stats());
  const srv = startMetricsServer(m, { listen: `127.0.0.1:${PORT}` });
  assert(srv, "server started");
  let stop = false;
  let scrapes = 0;
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 1 });
  try {
    // Load: connections, requests, packet facts (some late), batches to a "sink" that ships, quarantines,
    // drops on a full spool, and kernel-side losses.
    const load = (async () => {
      let i = 0;
      let seed = 1;
      const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
      while (!stop) {
        for (let k = 0; k < 200; k++, i++) {
          const t: Tuple = {
            src: "192.0.2.1",
            src_port: 1024 + (i % 60000),
            dst: "192.0.2.2",
            dst_port: 443,
          };
          const now = performance.now();
          const late = rnd() < 0.1; // packet facts after the request: the row is held, then released
          const packets = () => {
            if (rnd() > 0.2) corr.onSyn(t, `syn${i}`, now);
            if (rnd() > 0.2) corr.onClientHello(t, { ja4: `j${i}`, ja4_r: "", tls_server_name: "" }, now);
          };
          if (!late) packets();
          corr.onRequest(t, 1, i % 1000, {
            ...emptyRow(),
            server: "nginx",
            capture: "uprobe",
            method: "GET",
            path: "/",
            http_version: "11",
          }, now);
          if (late) packets();
          m.rows.capture(1);
          m.events.inc({ hook: "nginx_recv" });
          corr.onClose(t, 1, i % 1000, now);
          if (rnd() < 0.01) m.rows.lostBeforeCapture("ringbuf_full", 1 + Math.floor(rnd() * 3));
          if (rnd() < 0.005) m.parseErrors.inc({ parser: "http1", kind: "invalid" });
        }
        const rows = corr.tick(performance.now());
        m.rows.move("correlate", "memory", rows.length);
        // Flush the in-memory batch: most to the spool then shipped, a few quarantined or dropped.
        const batch = m.rows.inStage("memory");
        const spoolFull = Math.floor(batch * 0.02);
        m.rows.drop("spool_full", "memory", spoolFull);
        m.rows.move("memory", "spool", batch - spoolFull);
        const t0 = performance.now();
        await new Promise((r) => setTimeout(r, 0)); // the "insert": scrapes interleave here
        const spooled = m.rows.inStage("spool");
        if (rnd() < 0.1) {
          m.rows.quarantine("spool", spooled);
          m.observeInsert("clickhouse", (performance.now() - t0) / 1000, false, "quarantine");
        } else if (rnd() < 0.8) {
          m.rows.ship("spool", spooled);
          m.observeInsert("clickhouse", (performance.now() - t0) / 1000, true);
        } else m.observeInsert("clickhouse", (performance.now() - t0) / 1000, false, "retry");
      }
      // Drain: everything still held ships.
      const rest = corr.flush();
      m.rows.move("correlate", "memory", rest.length);
      m.rows.ship("memory", m.rows.inStage("memory"));
      m.rows.ship("spool", m.rows.inStage("spool"));
      m.observeInsert("clickhouse", 0.001, true);
    })();

    let lastCaptured = -1;
    let sawPending = false;
    const deadline = performance.now() + 3000;
    while (performance.now() < deadline) {
      const res = await fetch(`${URL_BASE}/metrics`, { client });
      assertEquals(res.status, 200);
      assertStringIncludes(res.headers.get("content-type") ?? "", "text/plain; version=0.0.4");
      const text = await res.text();
      const id = identityFromScrape(text);
      assertEquals(id.resolved, id.captured, `identity at scrape ${scrapes}`);
      assert(id.captured >= lastCaptured, "captured is monotonic");
      lastCaptured = id.captured;
      if ((parsePrometheusText(text).get("ja4ebpf_rows_spooled") ?? 0) > 0) sawPending = true;
      scrapes++;
    }
    stop = true;
    await load;
    const text = await (await fetch(`${URL_BASE}/metrics`, { client })).text();
    const s = parsePrometheusText(text);
    const id = identityFromScrape(text);
    assertEquals(id.resolved, id.captured, "identity after drain");
    assertEquals(s.get("ja4ebpf_rows_spooled"), 0, "nothing pending after drain");
    console.log(`${scrapes} scrapes over ${id.captured} captured rows, identity held at each`);
    assertGreater(scrapes, 30, "scrape loop ran");
    assertGreater(id.captured, 10_000, "load ran");
    assert(sawPending, "some scrapes saw rows in flight (the identity was tested mid-flow)");
    assertGreater(s.get('ja4ebpf_rows_dropped_total{reason="ringbuf_full"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_rows_dropped_total{reason="spool_full"}') ?? 0, 0);
    assertGreater(s.get("ja4ebpf_rows_quarantined_total") ?? 0, 0);
    assertGreater(s.get("process_resident_memory_bytes") ?? 0, 1e6);
    assertGreater(s.get('ja4ebpf_events_total{hook="nginx_recv"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_correlation_rows_total{outcome="facts"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_correlation_rows_total{outcome="immediate"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_correlation_evictions_total{reason="closed"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_clickhouse_insert_duration_seconds_count{outcome="ok"}') ?? 0, 0);
    assertGreater(s.get('ja4ebpf_clickhouse_errors_total{class="quarantine"}') ?? 0, 0);
    assertEquals(s.get("ja4ebpf_accounting_errors_total"), 0);
    assert([...s.keys()].some((k) => k.startsWith("ja4ebpf_build_info{")), "build info exported");

    // Health: ~4 % of rows were dropped (ring buffer, full spool): over the 1 % threshold.
    const drops = await fetch(`${URL_BASE}/healthz`, { client });
    assertEquals(drops.status, 503);
    assertMatch(await drops.text(), /^unhealthy: dropped \d+ of \d+ rows in the last 60 s\n$/);
    // Drops age out of the 60 s window (fake time).
    fakeNow += 61_000;
    await (await fetch(`${URL_BASE}/healthz`, { client })).body?.cancel();
    fakeNow += 61_000;
    assertEquals(await fetch(`${URL_BASE}/healthz`, { client }).then((r) => r.text()), "ok\n");
    // The sink keeps failing past 60 s.
    m.observeInsert("clickhouse", 0.01, false, "network");
    fakeNow += 61_000;
    const bad = await fetch(`${URL_BASE}/healthz`, { client });
    assertEquals(bad.status, 503);
    assertMatch(await bad.text(), /unhealthy: sink clickhouse failing for 61 s/);
    const j = await (await fetch(`${URL_BASE}/healthz?format=json`, { client })).json();
    assertEquals([j.healthy, j.sinks.clickhouse], [false, 61_000]);
    assertEquals(
      parsePrometheusText(await (await fetch(`${URL_BASE}/metrics`, { client })).text()).get(
        "ja4ebpf_healthy",
      ),
      0,
    );
    m.observeInsert("clickhouse", 0.01, true);
    const ok = await fetch(`${URL_BASE}/healthz`, { client });
    assertEquals([ok.status, await ok.text()], [200, "ok\n"]);
    const nf = await fetch(`${URL_BASE}/nope`, { client });
    assertEquals(nf.status, 404);
    await nf.body?.cancel();
    const post = await fetch(`${URL_BASE}/metrics`, { client, method: "POST" });
    assertEquals(post.status, 405);
    await post.body?.cancel();
  } finally {
    stop = true;
    client.close();
    await srv.close();
  }
});

Deno.test("metrics endpoint: loopback default, off switch, busy port, bad address", async (t) => {
  await t.step("default listen address is 127.0.0.1:9435", () => {
    assertEquals(parseListen("127.0.0.1:9435"), { hostname: "127.0.0.1", port: 9435 });
    assertEquals(parseListen("[::1]:19435"), { hostname: "::1", port: 19435 });
    assertEquals(parseListen(":19435"), { hostname: "0.0.0.0", port: 19435 });
  });
  await t.step("enabled: false serves nothing", async () => {
    assertEquals(
      startMetricsServer(new AgentMetrics(), { enabled: false, listen: `127.0.0.1:${PORT}` }),
      null,
    );
    const err = await fetch(`${URL_BASE}/metrics`).then(() => null, (e) => e);
    assert(err instanceof TypeError, "nothing listens on the port");
  });
  await t.step("a taken port fails with AddrInUse", async () => {
    const a = startMetricsServer(new AgentMetrics(), { listen: `127.0.0.1:${PORT}` })!;
    try {
      let e: unknown = null;
      try {
        startMetricsServer(new AgentMetrics(), { listen: `127.0.0.1:${PORT}` });
      } catch (x) {
        e = x;
      }
      assert(e instanceof Deno.errors.AddrInUse, `got ${e}`);
      assertEquals(a.hostname, "127.0.0.1");
    } finally {
      await a.close();
    }
  });
  await t.step("bad addresses are typed errors", () => {
    for (const s of ["nope", "1.2.3.4:99999", "1.2.3.4:"]) {
      let e: unknown = null;
      try {
        parseListen(s);
      } catch (x) {
        e = x;
      }
      assert(e instanceof Error && e.name === "ListenAddressError", `${s}: ${e}`);
    }
  });
});
