/**
 * HTTPS through the running agent: SSL_read plaintext of nginx (TLS + HTTP/2) and Apache (mod_ssl) becomes one
 * row per request, joined with the JA4 of the connection's ClientHello (read by TC) and its JA4T. Checked
 * against an independent reading of the same traffic: tcpdump → `fingerprint --pcap --keylog --with-raw`,
 * connection by connection (matched by client address and port), and against the servers' access logs.
 * Clients: curl over HTTP/1.1 and HTTP/2 on loopback, and headless Chromium in a network namespace whose
 * ClientHello crosses a 1500-MTU veth in two segments. Then bad input on the TLS port (garbage, a truncated
 * and a malformed ClientHello, HTTP/2 with a broken HPACK block) must leave the agent running, counted.
 *
 * Needs root, nginx, apache2, tcpdump, tshark, curl, chromium. Rows are filtered by this file's ports: other
 * agents and servers may run on the host at the same time.
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import type { Row } from "../../src/sink/row.ts";
import type { StreamRecord } from "../../src/offline/fingerprint_capture.ts";
import { agentMapElement, MAIN_TS, rowsSettled, type RunningAgent, startAgent } from "../helpers/agent.ts";
import { PortState } from "../../src/bpf/layout.gen.ts";
import { type AccessEntry, startApache, startNginx } from "../helpers/servers.ts";
import { startTcpdump, tsharkFields } from "../helpers/capture.ts";
import { chromium, curl } from "../helpers/clients.ts";
import { createNetns } from "../helpers/netns.ts";
import { delay, HarnessError, makeTempDir, requireTool, runOk, waitUntil } from "../helpers/proc.ts";

const NGINX = 26080;
const NGINX_TLS = 26443;
const APACHE = 26081;
const APACHE_TLS = 26444;
const METRICS = 26435;
const TLS_PORTS = new Set([NGINX_TLS, APACHE_TLS]);

const connKey = (addr: string, port: number) => `${addr}:${port}`;

/** `fingerprint --pcap F --keylog K --with-raw`: the offline reading, decrypted. */
async function offline(pcap: string, keylog: string): Promise<StreamRecord[]> {
  const out = await runOk(
    [Deno.execPath(), "run", "-A", MAIN_TS, "fingerprint", "--pcap", pcap, "--keylog", keylog, "--with-raw"],
    { env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" }, timeoutMs: 60_000 },
  );
  return out.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as StreamRecord);
}

/** curl -k with a key log; returns the local port of each transfer. */
async function curlTls(args: string[], keylog: string): Promise<number[]> {
  const r = await curl(["-k", "-o", "/dev/null", "-w", "<port=%{local_port}>", ...args], {
    env: { SSLKEYLOGFILE: keylog },
  });
  if (r.code !== 0) throw new HarnessError(`curl ${args.join(" ")}: exit ${r.code} ${r.stderr}`);
  return [...r.stdout.matchAll(/<port=(\d+)>/g)].map((m) => Number(m[1]));
}

function excerpt(agent: RunningAgent): string {
  return agent.stderr().split("\n").filter((l) => !/ DEBUG /.test(l)).slice(-40).join("\n");
}

/**
 * Whether the TC ingress filter on iface is still this agent's program. Every agent uses the same filter
 * handle/priority and replaces what is there, so another agent started on the host meanwhile takes the
 * packet side (SYNs → JA4T, hellos) away from ours: say so instead of failing on a missing JA4T.
 */
async function ownsTc(agent: RunningAgent, iface: string): Promise<string | undefined> {
  const out = await runOk([requireTool("tc", "iproute2"), "-j", "filter", "show", "dev", iface, "ingress"]);
  const ids = (JSON.parse(out || "[]") as { options?: { prog?: { id?: number } } }[])
    .map((f) => f.options?.prog?.id).filter((id): id is number => id !== undefined);
  const mine = agent.progIds();
  return ids.some((id) => mine.includes(id))
    ? undefined
    : `the tc ingress filter on ${iface} is no longer this agent's (programs ${ids}, ours ${mine}): ` +
      "another ja4ebpf agent started on this host replaced it";
}

/** Sum of every ja4ebpf_parse_errors_total series whose labels include `match`. */
function parseErrors(m: Map<string, number>, match = ""): number {
  let n = 0;
  for (const [k, v] of m) if (k.startsWith("ja4ebpf_parse_errors_total") && k.includes(match)) n += v;
  return n;
}

/**
 * Per connection of `port`: the access log's requests, the agent's rows and the offline record agree —
 * one row per logged request, and method, path, JA4H, JA4 (+ raw), JA4T, SNI and HTTP version as offline.
 * Returns the number of rows compared.
 */
function compareConnections(
  port: number,
  log: AccessEntry[],
  rows: Row[],
  streams: StreamRecord[],
  server: "nginx" | "apache",
): number {
  const logged = new Map<string, AccessEntry[]>();
  for (const e of log.filter((e) => e.serverPort === port)) {
    const k = connKey(e.remoteAddr, e.remotePort);
    logged.set(k, [...(logged.get(k) ?? []), e]);
  }
  const got = new Map<string, Row[]>();
  for (const r of rows.filter((r) => r.dst_port === port)) {
    const k = connKey(r.src, r.src_port);
    got.set(k, [...(got.get(k) ?? []), r]);
  }
  assertEquals(
    [...got.keys()].sort(),
    [...logged.keys()].sort(),
    `${server}:${port}: connections with rows = connections in the access log`,
  );
  let n = 0;
  for (const [k, entries] of logged) {
    const rs = got.get(k) ?? [];
    const s = streams.find((s) => s.dst_port === port && connKey(s.src, s.src_port) === k);
    assert(s, `offline record of ${k}`);
    assert(s.ja4, `offline JA4 of ${k}`);
    assertEquals(rs.length, entries.length, `${k}: rows vs access-log requests`);
    // Both lists in request order; HTTP/2 requests of one connection are sequential here.
    const want = (s.http ?? []).map((h) => [h.method, h.path.split("?")[0], h.ja4h]).sort();
    assertEquals(
      rs.map((r) => [r.method, r.path, r.ja4h]).sort(),
      want,
      `${k}: method, path, JA4H as offline`,
    );
    const logPaths = entries.map((e) => e.request.split(" ")[1]?.split("?")[0]).sort();
    assertEquals(rs.map((r) => r.path).sort(), logPaths, `${k}: paths as in the access log`);
    const h2 = entries[0].request.endsWith("HTTP/2.0");
    for (const r of rs) {
      assertEquals(r.capture, "ssl_uprobe", `${k} ${r.path}: capture`);
      assertEquals(r.server, server, `${k} ${r.path}: server`);
      assertEquals(r.ja4, s.ja4, `${k} ${r.path}: JA4 of the connection`);
      assertEquals(r.ja4_r, s.ja4_r ?? "", `${k} ${r.path}: JA4_r`);
      assertEquals(r.ja4t, s.ja4t ?? "", `${k} ${r.path}: JA4T`);
      assertEquals(r.tls_server_name, s.tls_server_name ?? "", `${k} ${r.path}: SNI`);
      assertEquals(r.http_version, h2 ? "20" : "11", `${k} ${r.path}: http_version`);
      assertEquals(r.truncated, false, `${k} ${r.path}: not truncated`);
    }
    n += rs.length;
  }
  return n;
}

/** Reads until the peer closes (or timeoutMs); errors count as a close. */
async function drain(conn: Deno.Conn, timeoutMs: number): Promise<void> {
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  const buf = new Uint8Array(16384);
  try {
    while ((await conn.read(buf)) !== null) { /* discard */ }
  } catch { /* reset or closed by the timer */ }
  clearTimeout(timer);
  try {
    conn.close();
  } catch { /* closed */ }
}

/** Plain TCP to the TLS port: writes bytes, then reads until nginx gives up on the connection. */
async function sendRaw(port: number, bytes: Uint8Array, waitMs = 3000): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const local = (conn.localAddr as Deno.NetAddr).port;
  await conn.write(bytes).catch(() => 0);
  await drain(conn, waitMs);
  return local;
}

const TLS_SEND_PY = `
import binascii, json, socket, ssl, sys
a = json.loads(sys.argv[1])
s = socket.create_connection(("127.0.0.1", a["port"]), timeout=a["timeout"])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols([a["alpn"]])
t = ctx.wrap_socket(s, server_hostname="localhost")
out = {"localPort": t.getsockname()[1], "alpn": t.selected_alpn_protocol(), "received": 0}
t.sendall(binascii.unhexlify(a["hex"]))
try:
    while True:
        d = t.recv(65536)
        if not d:
            break
        out["received"] += len(d)
except (socket.timeout, ssl.SSLError, OSError):
    pass
print(json.dumps(out))
`;

/**
 * TLS client (python's ssl, no certificate check) with one ALPN protocol: sends the bytes after the handshake
 * and reads until the server closes.
 */
async function tlsSend(
  port: number,
  alpn: string,
  parts: Uint8Array[],
): Promise<{ localPort: number; alpn: string | null; received: number }> {
  const hex = parts.map((p) => Array.from(p, (b) => b.toString(16).padStart(2, "0")).join("")).join("");
  const out = await runOk([
    requireTool("python3", "python3"),
    "-c",
    TLS_SEND_PY,
    JSON.stringify({ port, alpn, hex, timeout: 5 }),
  ], { timeoutMs: 15_000 });
  return JSON.parse(out);
}

function h2Frame(type: number, flags: number, stream: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(9 + payload.length);
  f[0] = payload.length >> 16;
  f[1] = (payload.length >> 8) & 0xff;
  f[2] = payload.length & 0xff;
  f[3] = type;
  f[4] = flags;
  new DataView(f.buffer).setUint32(5, stream & 0x7fffffff);
  f.set(payload, 9);
  return f;
}

Deno.test("agent HTTPS: nginx (h1, h2, Chromium over a veth) and Apache rows carry the offline JA4/JA4H/JA4T; bad input is counted", async (t) => {
  // TC is attached to the interfaces present at start: the veth must exist before the agent.
  await using ns = await createNetns("ja4https");
  await using nginx = await startNginx({
    port: NGINX,
    tlsPort: NGINX_TLS,
    hosts: ["127.0.0.1", ns.hostAddr],
    workers: 2,
    http2: true,
  });
  await using apache = await startApache({ port: APACHE, tlsPort: APACHE_TLS, workers: 2, http2: false });
  const dir = await makeTempDir("ja4ebpf-https-");
  try {
    const curlKeys = `${dir}/curl.keys`;
    const chromeKeys = `${dir}/chromium.keys`;
    await using loDump = await startTcpdump({
      iface: "lo",
      filter: `tcp port ${NGINX_TLS} or tcp port ${APACHE_TLS}`,
      file: `${dir}/lo.pcap`,
    });
    await using vethDump = await startTcpdump({
      iface: ns.hostIf,
      filter: `tcp port ${NGINX_TLS}`,
      file: `${dir}/veth.pcap`,
    });
    // The agent follows every nginx/Apache on the host (other tests' too, possibly under load): TC only on
    // this file's ports, and a roomy ring so a burst elsewhere does not crowd our events out.
    await using agent = await startAgent({
      metricsPort: METRICS,
      config: { capture: { ports: [NGINX, NGINX_TLS, APACHE, APACHE_TLS], ring_size_mb: 64 } },
    });
    assertEquals(
      agent.capture.packets !== undefined,
      true,
      `TC capture in the ready line: ${agent.readyLine}`,
    );
    // The SSL uprobes attach to the libssl the servers map (at start, or at the next 1 s refresh).
    await agent.waitForLog(/HTTPS plaintext capture attached/, 10_000);

    // --- traffic ---------------------------------------------------------------------------------------
    const base = `https://127.0.0.1:${NGINX_TLS}`;
    const h1Ports = await curlTls([
      "--http1.1",
      "-H",
      "Accept-Language: en-US,en;q=0.8",
      `${base}/h1/a?x=1`,
      `${base}/h1/b`,
    ], curlKeys);
    assertEquals(new Set(h1Ports).size, 1, `curl --http1.1 reused one connection: ${h1Ports}`);
    const h2Ports = await curlTls([
      "--http2",
      "--resolve",
      `localhost:${NGINX_TLS}:127.0.0.1`,
      "-b",
      "session=abc123; theme=dark",
      "-e",
      "https://ref.example/page",
      "-H",
      "Accept-Language: de-DE,de;q=0.9",
      `https://localhost:${NGINX_TLS}/h2/a`,
      `https://localhost:${NGINX_TLS}/h2/b?q=2`,
      `https://localhost:${NGINX_TLS}/h2/c`,
    ], curlKeys);
    assertEquals(new Set(h2Ports).size, 1, `curl --http2 reused one connection: ${h2Ports}`);
    const chrome = await chromium({
      url: `https://${ns.hostAddr}:${NGINX_TLS}/chrome?from=ns`,
      netns: ns,
      keylogFile: chromeKeys,
    });
    assertEquals(chrome.code, 0, `chromium: ${chrome.stderr.slice(-1500)}`);
    assert(chrome.dom.includes("ok"), `chromium got the page: ${chrome.dom.slice(0, 200)}`);
    const apPorts = await curlTls([
      "--http1.1",
      "-b",
      "id=7",
      "-H",
      "Accept-Language: fr",
      `https://127.0.0.1:${APACHE_TLS}/`,
      `https://127.0.0.1:${APACHE_TLS}/index.html?z=1`,
    ], curlKeys);
    await curlTls(["--http1.1", `https://127.0.0.1:${APACHE_TLS}/missing`], curlKeys);
    assertEquals(new Set(apPorts).size, 1, `curl to Apache reused one connection: ${apPorts}`);

    // Once lost, the filter never comes back: checking after the traffic covers the whole of it.
    const stolen = (await ownsTc(agent, "lo")) ?? (await ownsTc(agent, ns.hostIf));
    assertEquals(stolen, undefined, "packet capture still ours");

    // --- wait for rows, then read the captures offline -----------------------------------------------------
    await delay(500); // Chromium may exit while its last request is still being logged
    let nginxLog = (await nginx.accessLog()).filter((e) => e.serverPort === NGINX_TLS);
    const apacheLog = await apache.waitForRequests(3);
    let nNginx = nginxLog.length;
    assertGreater(nNginx, 5, "nginx logged curl's and Chromium's requests");
    let rows: Row[] = [];
    try {
      await agent.waitForRows((r) => r.dst_port === NGINX_TLS, nNginx, 30_000);
      await agent.waitForRows((r) => r.dst_port === APACHE_TLS, apacheLog.length, 15_000);
    } catch (e) {
      const have = (await agent.rows()).filter((r) => TLS_PORTS.has(r.dst_port))
        .map((r) => `${r.src}:${r.src_port} ${r.method} ${r.path} ${r.http_version}`);
      const want = [...nginxLog, ...apacheLog].map((e) => `${e.remoteAddr}:${e.remotePort} ${e.request}`);
      throw new Error(
        `${(e as Error).message}\nrows:\n${have.join("\n")}\naccess logs:\n${want.join("\n")}\n${
          excerpt(agent)
        }`,
      );
    }
    await rowsSettled(agent, () => excerpt(agent)); // every captured row written: a duplicate would be there
    rows = (await agent.rows()).filter((r) => TLS_PORTS.has(r.dst_port));
    nginxLog = (await nginx.accessLog()).filter((e) => e.serverPort === NGINX_TLS);
    nNginx = nginxLog.length;
    await loDump.stop();
    await vethDump.stop();
    const loStreams = await offline(loDump.file, curlKeys);
    const vethStreams = await offline(vethDump.file, chromeKeys);
    const chromeRows = rows.filter((r) => r.src === ns.nsAddr);

    await t.step("nginx: one row per logged request, each equal to the offline reading", () => {
      assertEquals(
        rows.filter((r) => r.dst_port === NGINX_TLS).length,
        nNginx,
        "nginx TLS rows vs access log",
      );
      const n = compareConnections(
        NGINX_TLS,
        nginxLog,
        rows,
        [...loStreams, ...vethStreams],
        "nginx",
      );
      assertEquals(n, nNginx);
      const h2Rows = rows.filter((r) => r.src_port === h2Ports[0] && r.src === "127.0.0.1");
      assertEquals(h2Rows.map((r) => r.http_version), ["20", "20", "20"], "curl --http2 rows are h2");
      assertEquals(h2Rows.map((r) => r.tls_server_name), ["localhost", "localhost", "localhost"]);
      assert(
        h2Rows.every((r) => /^ge20cr\d\dde/.test(r.ja4h)),
        `h2 JA4H with cookie, referer, de: ${h2Rows.map((r) => r.ja4h)}`,
      );
      const h1Rows = rows.filter((r) => r.src_port === h1Ports[0] && r.src === "127.0.0.1");
      assertEquals(h1Rows.map((r) => r.path), ["/h1/a", "/h1/b"]);
      assert(chromeRows.length >= 1, "Chromium's requests have rows");
      assert(chromeRows.some((r) => r.path === "/chrome" && r.http_version === "20"), "Chromium over h2");
    });

    await t.step("Chromium's ClientHello crossed the veth in more than one segment", async () => {
      const hellos = await tsharkFields(vethDump.file, "tls.handshake.type == 1", [
        "tcp.srcport",
        "tcp.segment.count",
      ]);
      assertGreater(hellos.length, 0, "ClientHellos on the veth");
      for (const [port, segs] of hellos) {
        assertGreater(Number(segs || 1), 1, `hello of port ${port} spans segments`);
      }
    });

    await t.step("Apache mod_ssl: one row per logged request, each equal to the offline reading", () => {
      assertEquals(
        rows.filter((r) => r.dst_port === APACHE_TLS).length,
        apacheLog.length,
        "apache TLS rows vs access log",
      );
      assertEquals(compareConnections(APACHE_TLS, apacheLog, rows, loStreams, "apache"), apacheLog.length);
    });

    await t.step("bad input on the TLS port: agent keeps running, parse errors counted", async () => {
      const streamErrs = async () => parseErrors(await agent.metrics(), 'parser="request_stream"');
      const helloErrs = async () => parseErrors(await agent.metrics(), 'parser="packet_hello"');
      /** Polls until counter() exceeds `from` (events are handled asynchronously); returns the new value. */
      const grows = async (counter: () => Promise<number>, from: number, what: string) => {
        const deadline = Date.now() + 15_000;
        for (;;) {
          const v = await counter();
          if (v > from) return v;
          if (Date.now() > deadline) {
            const tc = await ownsTc(agent, "lo");
            throw new Error(`${what}: counter stayed at ${v}${tc ? ` (${tc})` : ""}\n${excerpt(agent)}`);
          }
          await delay(200);
        }
      };
      const badPorts: number[] = [];
      // Random bytes: nginx drops the handshake; the request side sees no HTTP in them.
      badPorts.push(await sendRaw(NGINX_TLS, crypto.getRandomValues(new Uint8Array(3000))));
      // A ClientHello cut short: the record promises 512 bytes, 40 arrive, then the client gives up.
      const cutHello = new Uint8Array(40);
      cutHello.set([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
      badPorts.push(await sendRaw(NGINX_TLS, cutHello, 500));

      // A whole ClientHello record whose body is inconsistent (session id longer than the message): rejected
      // by the packet side (tc). nginx's raw read() of the socket is not traced where tc gives the ClientHello
      // and its ngx_ssl_recv probe has the fd (the read tracepoints would tax every read() on the host).
      const hello = await helloErrs();
      const bad = new Uint8Array(5 + 4 + 60);
      bad.set([0x16, 0x03, 0x01, 0x00, 64, 0x01, 0x00, 0x00, 60, 0x03, 0x03]);
      bad[5 + 4 + 2 + 32] = 200; // session id length
      badPorts.push(await sendRaw(NGINX_TLS, bad));
      await grows(helloErrs, hello, "malformed ClientHello counted on the packet side");
      const stream = await streamErrs();

      // HTTP/2 over TLS with a HEADERS block that is not valid HPACK (index 63: the dynamic table is empty).
      const preface = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      const h2 = await tlsSend(NGINX_TLS, "h2", [
        preface,
        h2Frame(0x4, 0, 0, new Uint8Array(0)),
        h2Frame(0x1, 0x5, 1, new Uint8Array([0xbf, 0x84, 0x87])),
      ]);
      assertEquals(h2.alpn, "h2", "ALPN h2");
      badPorts.push(h2.localPort);
      await grows(streamErrs, stream, "broken HPACK block counted");

      // Later requests still become rows, joined with their JA4.
      const after1 = await curlTls(["--http2", `${base}/after-bad-h2`], curlKeys);
      const after2 = await curlTls(["--http1.1", `${base}/after-bad-h1`], curlKeys);
      const got = await agent.waitForRows(
        (r) => r.path.startsWith("/after-bad-") && r.dst_port === NGINX_TLS,
        2,
        20_000,
      ).catch((e) => {
        throw new Error(`${e.message}\n${excerpt(agent)}`);
      });
      assertEquals(
        got.map((r) => [r.path, r.http_version, r.src_port]).sort(),
        [["/after-bad-h1", "11", after2[0]], ["/after-bad-h2", "20", after1[0]]],
      );
      for (const r of got) assert(/^t1[23]i/.test(r.ja4), `JA4 joined after bad input: ${r.ja4}`);
      await delay(500);
      const all = await agent.rows();
      assertEquals(
        all.filter((r) => r.dst_port === NGINX_TLS && r.src === "127.0.0.1" && badPorts.includes(r.src_port)),
        [],
        "no rows invented for the bad connections",
      );
      assertEquals(parseErrors(await agent.metrics(), 'parser="agent"'), 0, "no exception in event handling");
    });

    await t.step(
      `a TLS port after ${PortState.PLAIN_AFTER} plain connections in a row: tc stops following its connections; its next TLS connection brings that back`,
      async () => {
        const state = async () => (await agentMapElement(agent.pid, "listen_ports", NGINX_TLS))[0];
        assertEquals(await state(), PortState.WATCHED, "the bad input before was not that many in a row");
        const plain = new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"); // nginx answers 400 and closes
        for (let i = 0; i < PortState.PLAIN_AFTER + 2; i++) await sendRaw(NGINX_TLS, plain);
        assertEquals(await state(), PortState.PLAIN);
        // nginx's raw reads are not traced: its plaintext probe's first read of the connection says TLS.
        const first = await curlTls(["--http1.1", `${base}/after-plain-1`], curlKeys);
        await waitUntil(async () => (await state()) === PortState.WATCHED, 10_000, "the port followed again");
        const second = await curlTls(["--http1.1", `${base}/after-plain-2`], curlKeys);
        const got = await agent.waitForRows(
          (r) => r.path.startsWith("/after-plain-") && r.dst_port === NGINX_TLS,
          2,
          20_000,
        );
        const byPath = Object.fromEntries(got.map((r) => [r.path, r]));
        assertEquals([byPath["/after-plain-1"].src_port, byPath["/after-plain-2"].src_port], [
          first[0],
          second[0],
        ]);
        assert(
          /^t1[23]i/.test(byPath["/after-plain-2"].ja4),
          `JA4 of the next connection: ${byPath["/after-plain-2"].ja4}`,
        );
      },
    );

    assertEquals(
      await agent.stop("SIGTERM", 30_000),
      { code: 0, signal: null },
      `clean exit:\n${excerpt(agent)}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
