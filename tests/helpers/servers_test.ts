/**
 * The server helpers against real Debian nginx and Apache on loopback (nginx 20080/20443, Apache 20081/20444),
 * driven by the real clients from clients.ts.
 */
import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertStringIncludes,
} from "../../src/testing/asserts.ts";
import { startApache, startNginx } from "./servers.ts";
import { bigHeader, curl, httpRequest, rawHttp, wrk } from "./clients.ts";
import { alive, portFree } from "./proc.ts";

const NGINX_HTTP = 20080;
const NGINX_TLS = 20443;
const APACHE_HTTP = 20081;
const APACHE_TLS = 20444;

Deno.test("nginx: plain, TLS + h2, keep-alive, pipelining, header limits, reload, close", async (t) => {
  const srv = await startNginx({ port: NGINX_HTTP, tlsPort: NGINX_TLS, workers: 2, keepaliveRequests: 3 });
  let pids = srv.pids();
  try {
    assertEquals(pids.workers.length, 2, "two workers");

    await t.step(
      "curl over HTTP/1.1, HTTP/1.0 and h2 with -k; the access log shows the protocol",
      async () => {
        const cases: [string[], string, string][] = [
          [["--http1.1", srv.url], "1.1", "GET / HTTP/1.1"],
          // nginx answers an HTTP/1.0 request with an HTTP/1.1 status line.
          [["--http1.0", srv.url], "1.1", "GET / HTTP/1.0"],
          [["--http2", "-k", srv.tlsUrl!], "2", "GET / HTTP/2.0"],
          [["--http1.1", "-k", srv.tlsUrl!], "1.1", "GET / HTTP/1.1"],
        ];
        for (const [i, [args, version, line]] of cases.entries()) {
          const r = await curl(["-w", "\n%{http_code} %{http_version}", ...args]);
          assertEquals(r.code, 0, r.stderr);
          assertEquals(r.stdout, `${srv.body}\n200 ${version}`);
          const log = await srv.waitForRequests(i + 1);
          assertEquals(log[i].request, line);
          assertEquals(log[i].tls === "", args.includes(srv.url), "TLS protocol logged on the TLS port only");
        }
      },
    );

    await t.step("several URLs in one curl reuse the connection; access log sees each request", async () => {
      const before = (await srv.accessLog()).length;
      const r = await curl(["-w", "%{num_connects}\n", "-b", "session=abc", srv.url, srv.url, srv.url]);
      assertEquals(r.stdout, `${srv.body}1\n${srv.body}0\n${srv.body}0\n`);
      const log = (await srv.waitForRequests(before + 3)).slice(before);
      assertEquals(log.map((e) => e.connRequests), [1, 2, 3]);
      assertEquals(new Set(log.map((e) => e.remotePort)).size, 1, "one connection");
      assertEquals(log[0].serverPort, NGINX_HTTP);
    });

    await t.step("keepalive_requests 3 closes the connection after the third pipelined request", async () => {
      const req = httpRequest();
      const r = await rawHttp(srv.host, NGINX_HTTP, req + req + req + req, { responses: 4, timeoutMs: 5000 });
      assertEquals(r.responses.map((x) => x.status), [200, 200, 200]);
      assert(r.closed, "server closed after keepalive_requests");
      assertEquals(r.responses[2].headers["connection"], "close");
    });

    await t.step(
      "a 12 KiB header line gets 400, a 6 KiB one 200 (large_client_header_buffers 4 8k)",
      async () => {
        const big = await rawHttp(srv.host, NGINX_HTTP, httpRequest({ headers: [bigHeader(12 * 1024)] }));
        assertEquals(big.responses[0]?.status, 400, big.text.slice(0, 200));
        assertStringIncludes(big.responses[0].body, "Request Header Or Cookie Too Large");
        const ok = await rawHttp(srv.host, NGINX_HTTP, httpRequest({ headers: [bigHeader(6 * 1024)] }));
        assertEquals(ok.responses[0]?.status, 200);
      },
    );

    await t.step("reload replaces the workers and keeps serving", async () => {
      const fresh = await srv.reload();
      assertEquals(fresh.length, 2);
      for (const p of fresh) assert(!pids.workers.includes(p), `worker ${p} is new`);
      assertEquals(srv.pids().master, pids.master, "same master");
      assertEquals((await curl(["-f", srv.url])).stdout, srv.body);
      pids = srv.pids();
    });

    await t.step("wrk reports a request rate and the access log grows by as much", async () => {
      const before = (await srv.accessLog()).length;
      const w = await wrk({ url: srv.url, connections: 2, threads: 1, duration: 1 });
      assertGreater(w.requestsPerSec, 50);
      assertEquals(w.non2xx, 0);
      const after = (await srv.waitForRequests(before + w.requests)).length;
      // wrk counts completed responses; requests in flight when it stops may still be logged.
      assert(after - before >= w.requests, `log grew by ${after - before}, wrk saw ${w.requests}`);
      console.log(`nginx (2 workers, wrk 2 conns): ${w.requestsPerSec.toFixed(0)} req/s`);
    });
  } finally {
    await srv.close();
  }
  for (const p of [pids.master, ...pids.workers]) assert(!alive(p), `pid ${p} gone after close`);
  assert(portFree(NGINX_HTTP) && portFree(NGINX_TLS), "ports free after close");
  assert(!(await Deno.stat(srv.dir).then(() => true, () => false)), "temp dir removed");
});

Deno.test("apache: HTTP and HTTPS (h2) answer curl; real workers; close cleans up", async (t) => {
  let pids;
  let dir;
  {
    await using srv = await startApache({ port: APACHE_HTTP, tlsPort: APACHE_TLS, body: "apache ok\n" });
    dir = srv.dir;
    pids = srv.pids();
    assertGreater(pids.workers.length, 0, "child processes serve, not the master (-X not used)");

    await t.step("curl over HTTP/1.1, h2 and HTTP/1.1 on TLS", async () => {
      for (
        const [args, version] of [[[srv.url], "1.1"], [["--http2", "-k", srv.tlsUrl!], "2"], [[
          "-k",
          "--http1.1",
          srv.tlsUrl!,
        ], "1.1"]] as const
      ) {
        const r = await curl(["-w", "\n%{http_code} %{http_version}", ...args]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, `apache ok\n\n200 ${version}`);
      }
    });

    await t.step("access log: TLS protocol, local port, per-connection request index", async () => {
      const r = await curl(["-k", "--http1.1", srv.tlsUrl!, srv.tlsUrl!]);
      assertEquals(r.stdout, "apache ok\n".repeat(2));
      const log = await srv.waitForRequests(5);
      const last = log.slice(-2);
      assertEquals(last.map((e) => e.connRequests), [1, 2]);
      assertEquals(last.map((e) => e.serverPort), [APACHE_TLS, APACHE_TLS]);
      assertMatch(last[0].tls, /^TLSv1\.[23]$/);
      assertEquals(log[0].tls, "");
      assertEquals(log[0].serverPort, APACHE_HTTP);
    });

    await t.step("graceful restart (SIGUSR1) replaces the children and keeps serving", async () => {
      const old = srv.pids().workers;
      const fresh = await srv.reload();
      for (const p of fresh) assert(!old.includes(p), `child ${p} is new`);
      assertEquals((await curl(["-f", srv.url])).stdout, "apache ok\n");
      pids = srv.pids();
    });

    await t.step("a 12 KiB header line gets 400 (LimitRequestFieldSize 8190)", async () => {
      const big = await rawHttp(srv.host, APACHE_HTTP, httpRequest({ headers: [bigHeader(12 * 1024)] }));
      assertEquals(big.responses[0]?.status, 400, big.text.slice(0, 200));
    });
  }
  for (const p of [pids.master, ...pids.workers]) assert(!alive(p), `pid ${p} gone after close`);
  assert(portFree(APACHE_HTTP) && portFree(APACHE_TLS), "ports free after close");
  assert(!(await Deno.stat(dir).then(() => true, () => false)), "temp dir removed");
});

Deno.test("startNginx: a busy port is a clear error, and nothing is left behind", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: NGINX_HTTP });
  try {
    let msg = "";
    await startNginx({ port: NGINX_HTTP }).then((s) => s.close(), (e) => msg = String(e));
    assertStringIncludes(msg, `127.0.0.1:${NGINX_HTTP} is busy`);
  } finally {
    l.close();
  }
});
