/**
 * The running agent against real nginx (2 workers) and Apache (mpm_event) on loopback: every request is
 * exactly one row whose server, method, path, JA4H, 4-tuple, JA4T and capture method match an independent
 * reading of the same traffic (tcpdump → `ja4ebpf fingerprint --pcap --with-raw`). Then the runtime cases of
 * the capture: a server started after the agent, an nginx reload, and a keep-alive connection older than the
 * agent. Needs root, nginx, apache2, tcpdump and curl. Rows are filtered by this file's ports: other agents
 * and servers may run on the host at the same time.
 */
import { assert, assertEquals, assertGreater, assertMatch } from "../../src/testing/asserts.ts";
import type { Row } from "../../src/sink/row.ts";
import type { StreamRecord } from "../../src/offline/fingerprint_capture.ts";
import {
  listensOn,
  MAIN_TS,
  rowsSettled,
  type RunningAgent,
  startAgent,
  tracedPids,
} from "../helpers/agent.ts";
import { startApache, startNginx, type WebServer } from "../helpers/servers.ts";
import { startTcpdump } from "../helpers/capture.ts";
import { bigHeader, curl, httpRequest, rawHttp } from "../helpers/clients.ts";
import { delay, HarnessError, runOk, waitUntil } from "../helpers/proc.ts";
import { requireFeature } from "../helpers/features.ts";

const NGINX = 24080;
const NGINX_TLS = 24443;
const APACHE = 24081;
const MY_PORTS = new Set([NGINX, NGINX_TLS, APACHE]);

const tupleKey = (t: { src: string; src_port: number; dst: string; dst_port: number }) =>
  `${t.src}|${t.src_port}|${t.dst}|${t.dst_port}`;
const mine = (r: Row) => MY_PORTS.has(r.dst_port);

/** `ja4ebpf fingerprint --pcap F --with-raw`, the offline reading of the same traffic. */
async function offline(pcap: string): Promise<StreamRecord[]> {
  const out = await runOk([
    Deno.execPath(),
    "run",
    "-A",
    MAIN_TS,
    "fingerprint",
    "--pcap",
    pcap,
    "--with-raw",
  ], {
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    timeoutMs: 60_000,
  });
  return out.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as StreamRecord);
}

/** curl with the local port of each transfer (bodies after the first go to stdout too: pick the markers). */
async function curlPorts(args: string[]): Promise<number[]> {
  const r = await curl(["-o", "/dev/null", "-w", "<port=%{local_port}>", ...args]);
  if (r.code !== 0) throw new HarnessError(`curl ${args.join(" ")}: exit ${r.code} ${r.stderr}`);
  return [...r.stdout.matchAll(/<port=(\d+)>/g)].map((m) => Number(m[1]));
}

/** Rows on our ports, grouped by 4-tuple, in file order. */
function byTuple(rows: Row[]): Map<string, Row[]> {
  const m = new Map<string, Row[]>();
  for (const r of rows.filter(mine)) {
    const k = tupleKey(r);
    m.set(k, [...(m.get(k) ?? []), r]);
  }
  return m;
}

function excerpt(agent: RunningAgent): string {
  return agent.stderr().split("\n").filter((l) => !/ DEBUG /.test(l)).slice(-40).join("\n");
}

/** Every captured row in the file sink (tests/helpers/agent.ts), with the agent's log on a timeout. */
const settled = (agent: RunningAgent) => rowsSettled(agent, () => excerpt(agent));

/** The Apache processes are in the agent's traced_pids and its libapr uprobes (if it uses them) attached. */
async function followsApache(agent: RunningAgent, apache: WebServer): Promise<boolean> {
  const { master, workers } = apache.pids();
  const traced = await tracedPids(agent.pid);
  if (![master, ...workers].every((p) => traced.has(p))) return false;
  // The kernel adds an exec'd server to traced_pids at once; its port reaches tc at the agent's next scan.
  if (!(await listensOn(agent.pid, apache.port))) return false;
  if (agent.capture.apache && agent.capture.apache !== "uprobe") return true;
  // The libapr probes' last word: attached at start (the ready line), after a retry or again, not detached.
  const said = [...agent.stderr().matchAll(/apache uprobes (attached|re-attached|detached)/g)].pop()?.[1];
  return agent.capture.apache === "uprobe" ? said !== "detached" : said !== undefined && said !== "detached";
}

async function traffic(srv: WebServer): Promise<number> {
  const base = `http://127.0.0.1:${srv.port}`;
  let n = 0;
  // Keep-alive: several URLs on one connection (query strings must be stripped in rows).
  const ka = await curlPorts([
    "-b",
    "session=s1; theme=dark",
    `${base}/one?q=1`,
    `${base}/two`,
    `${base}/three?x=y&z=2`,
  ]);
  assertEquals(new Set(ka).size, 1, `curl reused one connection: ${ka}`);
  n += 3;
  // HTTP/1.0 and explicit HTTP/1.1.
  await curlPorts(["--http1.0", `${base}/ten`]);
  await curlPorts(["--http1.1", "-H", "Accept-Language: en-US", `${base}/eleven`]);
  n += 2;
  // Pipelining: three requests in a single write.
  const pipe = httpRequest({ path: "/p1" }) + httpRequest({ path: "/p2", method: "HEAD" }) +
    httpRequest({ path: "/p3", headers: [["Connection", "close"]] });
  const pr = await rawHttp("127.0.0.1", srv.port, pipe, { responses: 3 });
  assertGreater(pr.text.length, 0, "pipelined requests answered");
  n += 3;
  // ~12 KiB of header fields (each line under the 8 KiB limit): nginx reads 1 KiB, then into 8 KiB buffers.
  const big = httpRequest({
    path: "/big",
    headers: [bigHeader(4000, "X-Big-A"), bigHeader(4000, "X-Big-B"), bigHeader(4000, "X-Big-C"), [
      "Connection",
      "close",
    ]],
  });
  assertGreater(big.length, 12_000, "big head");
  const br = await rawHttp("127.0.0.1", srv.port, big);
  assertEquals(br.responses[0]?.status === 400, false, `12 KiB head accepted: ${br.text.slice(0, 80)}`);
  n += 1;
  return n;
}

Deno.test("agent capture: nginx + Apache requests are one row each, fingerprints equal the offline reading", async (t) => {
  await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 2, http2: false });
  await using apache = await startApache({ port: APACHE, workers: 2, http2: false });
  await using dump = await startTcpdump({
    iface: "lo",
    // A large buffer so a busy host does not make tcpdump drop the packets the rows are compared with.
    bufferKiB: 32 * 1024,
    filter: `tcp port ${NGINX} or tcp port ${NGINX_TLS} or tcp port ${APACHE}`,
  });
  await using agent = await startAgent();
  assert(agent.capture.nginx, `nginx capture method in the ready line: ${agent.readyLine}`);
  assert(agent.capture.apache, `apache capture method in the ready line: ${agent.readyLine}`);
  // New server processes reach the BPF filter at the next refresh (≤ 1 s); these servers predate the agent.

  let nNginx = await traffic(nginx);
  const nApache = await traffic(apache);
  const tls = await curl(["-k", "--http1.1", "-o", "/dev/null", "-w", "%{local_port}", `${nginx.tlsUrl}tls`]);
  assertEquals(tls.code, 0, `TLS curl: ${tls.stderr}`);
  const tlsPort = Number(tls.stdout);

  await nginx.waitForRequests(nNginx + 1);
  await apache.waitForRequests(nApache);
  let rows: Row[] = [];
  try {
    rows = await agent.waitForRows(
      (r) => r.dst_port === NGINX || r.dst_port === APACHE,
      nNginx + nApache,
      10_000,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}\nagent stderr:\n${excerpt(agent)}`);
  }
  // A last request, then every captured row in the file: anything extra (duplicates) of the requests before
  // would be there by then.
  await curlPorts([`http://127.0.0.1:${NGINX}/last`]);
  nNginx += 1;
  await nginx.waitForRequests(nNginx + 1);
  await agent.waitForRows((r) => r.dst_port === NGINX && r.path === "/last", 1, 10_000);
  await settled(agent);
  rows = (await agent.rows()).filter(mine);
  await dump.stop();
  const streams = (await offline(dump.file)).filter((s) => MY_PORTS.has(s.dst_port));

  await t.step("every request is exactly one row (counts equal the access logs)", () => {
    const count = (p: number) => rows.filter((r) => r.dst_port === p).length;
    assertEquals(count(NGINX), nNginx, "nginx rows");
    assertEquals(count(APACHE), nApache, "apache rows");
  });

  const rowsBy = byTuple(rows);
  await t.step(
    "per connection: method, path, JA4H (full, not truncated), 4-tuple and JA4T as offline",
    () => {
      let compared = 0;
      // Rows of connections whose packets tcpdump lost: not compared, counted apart and printed.
      let uncompared = 0;
      for (const s of streams) {
        if (s.dst_port === NGINX_TLS) continue;
        const got = rowsBy.get(tupleKey(s)) ?? [];
        const want = s.http ?? [];
        if (want.length === 0 && got.length > 0 && (dump.stats?.droppedByKernel ?? 0) > 0) {
          // tcpdump itself lost packets (busy host): no offline reading of this connection to compare with;
          // what does not need one is still checked.
          for (const r of got) {
            assertEquals(r.server, s.dst_port === NGINX ? "nginx" : "apache", `server of ${r.path}`);
            assertEquals(r.truncated, false, `not truncated: ${r.path}`);
          }
          uncompared += got.length;
          continue;
        }
        assertEquals(
          got.map((r) => [r.method, r.path, r.ja4h]),
          want.map((h) => [h.method, h.path.split("?")[0], h.ja4h]),
          `connection ${tupleKey(s)} (offline ${JSON.stringify(s)}; tcpdump ${JSON.stringify(dump.stats)})`,
        );
        for (const r of got) {
          assertEquals(r.ja4t, s.ja4t ?? "", `JA4T of ${tupleKey(s)} (${r.path})`);
          assertEquals(r.truncated, false, `not truncated: ${r.path}`);
          assertEquals(r.server, s.dst_port === NGINX ? "nginx" : "apache", `server of ${r.path}`);
          assertEquals(r.capture, agent.capture[r.server], `capture method of ${r.server} row ${r.path}`);
        }
        compared += got.length;
      }
      if (uncompared) {
        console.warn(
          `agent_capture_test: ${uncompared} rows not compared: tcpdump lost their packets (${
            JSON.stringify(dump.stats)
          })`,
        );
      }
      assertEquals(
        compared + uncompared,
        rows.filter((r) => r.dst_port !== NGINX_TLS).length,
        `every row has its connection (${compared} compared, ${uncompared} not: tcpdump lost their packets)`,
      );
      assertGreater(compared, uncompared, "most rows compared with the offline reading");
      const big = rows.filter((r) => r.path === "/big");
      assertEquals(big.length, 2, "the 12 KiB head on both servers");
      for (const r of big) {
        assert(
          /^ge11nn0[5-9]/.test(r.ja4h),
          `12 KiB head: full header count in ${r.ja4h}`,
        );
      }
      assert(rows.some((r) => r.http_version === "10"), "an HTTP/1.0 row");
    },
  );

  const tlsStream = streams.find((s) => s.dst_port === NGINX_TLS && s.src_port === tlsPort);
  const tlsRows = rows.filter((r) => r.dst_port === NGINX_TLS);
  await t.step("TLS connection: the offline capture has its JA4", () => {
    assert(tlsStream?.ja4, `offline JA4 for the TLS connection (port ${tlsPort})`);
  });
  // TLS rows need the SSL_read uprobes on the libssl nginx maps: required wherever the kernel has uprobes.
  const worker = nginx.pids().workers[0];
  assert(
    Deno.readTextFileSync(`/proc/${worker}/maps`).includes("/libssl.so"),
    `nginx worker ${worker} maps libssl`,
  );
  const tlsCaptured = await requireFeature(
    "uprobe",
    tlsRows.length > 0,
    "HTTP rows for the TLS connection (SSL_read uprobes)",
  ).catch((e) => {
    throw new Error(`${e.message}\n${excerpt(agent)}`);
  });
  await t.step({
    name: "TLS rows carry the JA4 of the TC ClientHello",
    ignore: !tlsCaptured,
    fn: () => {
      assertEquals(tlsRows.length, 1, "one TLS request, one row");
      for (const r of tlsRows) assertEquals(r.ja4, tlsStream?.ja4, `JA4 of ${tupleKey(r)}`);
    },
  });

  assertEquals(await agent.stop(), { code: 0, signal: null }, `clean exit:\n${excerpt(agent)}`);
});

Deno.test("agent capture: Apache started later, nginx reload, keep-alive connection older than the agent", async (t) => {
  // ::1 too: the IPv6 step below reads a v6 socket's tuple in the kernel (a separate branch of fd_tuple).
  await using nginx = await startNginx({
    port: NGINX,
    workers: 2,
    keepaliveTimeout: 60,
    hosts: ["127.0.0.1", "::1"],
  });
  // A keep-alive connection with one request done before the agent exists.
  const old = await Deno.connect({ hostname: "127.0.0.1", port: NGINX });
  const oldPort = (old.localAddr as Deno.NetAddr).port;
  const ask = async (conn: Deno.Conn, path: string) => {
    await conn.write(new TextEncoder().encode(httpRequest({ path })));
    const buf = new Uint8Array(4096);
    const n = await conn.read(buf);
    assert(
      n && new TextDecoder().decode(buf.subarray(0, n)).startsWith("HTTP/1.1 200"),
      `response to ${path}`,
    );
  };
  try {
    await ask(old, "/before-agent");
    await using agent = await startAgent({ config: { uprobes: { max_retries: 20, retry_interval_sec: 1 } } });

    await t.step("requests on a connection opened before the agent get rows with its 4-tuple", async () => {
      await ask(old, "/old-conn-1");
      await ask(old, "/old-conn-2");
      const got = await agent.waitForRows((r) => r.path.startsWith("/old-conn-"), 2, 8000)
        .catch((e) => {
          throw new Error(`${e.message}\n${excerpt(agent)}`);
        });
      for (const r of got) {
        assertEquals(
          [r.src, r.src_port, r.dst, r.dst_port, r.server],
          ["127.0.0.1", oldPort, "127.0.0.1", NGINX, "nginx"],
          r.path,
        );
      }
      assertEquals(
        (await agent.rows()).filter((r) => r.path === "/before-agent").length,
        0,
        "nothing invented",
      );
    });

    await t.step("an IPv6 client's requests carry its own 4-tuple", async () => {
      const v6 = await Deno.connect({ hostname: "::1", port: NGINX });
      try {
        const v6Port = (v6.localAddr as Deno.NetAddr).port;
        await ask(v6, "/v6-1");
        await ask(v6, "/v6-2");
        const got = await agent.waitForRows((r) => r.path.startsWith("/v6-"), 2, 8000).catch((e) => {
          throw new Error(`${e.message}\n${excerpt(agent)}`);
        });
        for (const r of got) {
          assertEquals([r.src, r.src_port, r.dst, r.dst_port, r.server], [
            "::1",
            v6Port,
            "::1",
            NGINX,
            "nginx",
          ], r.path);
          // Its SYN came after the agent: tc's IPv6 flow joins the request stream by the same tuple.
          assertMatch(r.ja4t, /^\d+_[\d-]+_\d+_\d+$/, `JA4T of the IPv6 connection (${r.path})`);
        }
      } finally {
        v6.close();
      }
    });

    await t.step("Apache started after the agent is picked up", async () => {
      // Dual-stack, as Apache's `Listen 80` binds: IPv4 clients reach it on an IPv6 socket as ::ffff:127.0.0.1,
      // which the kernel side reads as an IPv6 tuple and the rows must show as the IPv4 client it is.
      await using apache = await startApache({ port: APACHE, workers: 2, http2: false, hosts: ["::"] });
      // The agent follows new server processes at its next refresh (once a second): wait until it does.
      await waitUntil(
        () => followsApache(agent, apache),
        15_000,
        "the agent follows the Apache started after it",
        async () =>
          `apache ${JSON.stringify(apache.pids())}, traced ${
            JSON.stringify([...await tracedPids(agent.pid)])
          }\n${excerpt(agent)}`,
      );
      const v4 = `http://127.0.0.1:${APACHE}/`;
      const ports = await curlPorts([`${v4}late-1`, `${v4}late-2`, `${v4}late-3`]);
      const got = await agent.waitForRows((r) => r.dst_port === APACHE, 3, 8000).catch((e) => {
        throw new Error(`${e.message}\n${excerpt(agent)}`);
      });
      assertEquals(got.map((r) => r.path).sort(), ["/late-1", "/late-2", "/late-3"]);
      for (const r of got) {
        assertEquals(r.server, "apache");
        assertEquals(
          [r.src, r.src_port, r.dst, r.dst_port],
          ["127.0.0.1", ports[0], "127.0.0.1", APACHE],
          r.path,
        );
        assertEquals(r.capture, agent.capture.apache || "uprobe");
        assertMatch(r.ja4t, /^\d+_[\d-]+_\d+_\d+$/, `JA4T of the v4-mapped connection (${r.path})`);
      }
    });

    await t.step("nginx reload: no request lost once the new workers run", async () => {
      const workers = await nginx.reload();
      const sent: string[] = [];
      // Right after the new workers exist, then spread over the next seconds (new connections each time).
      for (let i = 0; i < 10; i++) {
        const p = `/reload-${i}`;
        const r = await curl(["-o", "/dev/null", "-w", "%{http_code}", `${nginx.url}${p.slice(1)}`]);
        assertEquals(r.stdout, "200");
        sent.push(p);
        await delay(i < 5 ? 0 : 300);
      }
      await nginx.waitForRequests(sent.length + 3);
      // Rows may lag on a busy host (the agent follows every server on it): wait for them, up to 10 s.
      const isReload = (r: Row) => r.dst_port === NGINX && r.path.startsWith("/reload-");
      await agent.waitForRows(isReload, sent.length, 10_000).catch(() => {});
      const got = (await agent.rows()).filter(isReload);
      const missing = sent.filter((p) => !got.some((r) => r.path === p));
      if (missing.length) {
        const m = (await agent.scrape()).split("\n").filter((l) =>
          /^ja4ebpf_(events|bpf_drops|parse|rows_captured)/.test(l)
        );
        console.error(`metrics at failure:\n${m.join("\n")}\nnginx pids now ${JSON.stringify(nginx.pids())}`);
      }
      assertEquals(
        missing,
        [],
        `requests without a row after the reload (new workers ${workers}):\n${excerpt(agent)}`,
      );
      for (const r of got) {
        assert(workers.includes(r.pid), `row from a new worker: pid ${r.pid} in ${workers}`);
      }
    });

    assertEquals(await agent.stop(), { code: 0, signal: null }, `clean exit:\n${excerpt(agent)}`);
  } finally {
    old.close();
  }
});
