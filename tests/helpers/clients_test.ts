/**
 * The parsers behind the clients (HTTP/1 responses, wrk reports, access logs) and the certificate maker.
 */
import {
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../../src/testing/asserts.ts";
import { bigHeader, httpRequest, parseH2load, parseResponses, parseWrk } from "./clients.ts";
import { parseAccessLog } from "./servers.ts";
import { makeCert } from "./certs.ts";
import { HarnessError, requireTool, run, runOk } from "./proc.ts";

Deno.test("parseResponses", async (t) => {
  const ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
  const cases: [string, string, boolean, [number, string][]][] = [
    ["one with Content-Length", ok, false, [[200, "ok\n"]]],
    ["two pipelined", ok + ok, false, [[200, "ok\n"], [200, "ok\n"]]],
    ["incomplete body waits", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", false, []],
    [
      "chunked",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n" + ok,
      false,
      [
        [200, "ok!"],
        [200, "ok\n"],
      ],
    ],
    [
      "chunked, last chunk missing",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
      false,
      [],
    ],
    ["no length: only at EOF", "HTTP/1.0 400 Bad\r\n\r\nbody", false, []],
    ["no length at EOF", "HTTP/1.0 400 Bad\r\n\r\nbody", true, [[400, "body"]]],
    ["304 has no body", "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n" + ok, false, [[304, ""], [
      200,
      "ok\n",
    ]]],
    ["garbage", "SSH-2.0-OpenSSH\r\n\r\n", true, []],
  ];
  for (const [name, text, eof, want] of cases) {
    await t.step(name, () => {
      assertEquals(parseResponses(text, eof).map((r) => [r.status, r.body]), want);
    });
  }
  await t.step("headers are lower-cased and repeats joined", () => {
    const [r] = parseResponses("HTTP/1.1 204 No\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n");
    assertEquals(r.headers, { "set-cookie": "a=1, b=2" });
  });
});

Deno.test("httpRequest and bigHeader build what they say", () => {
  const req = httpRequest({ path: "/x", headers: [bigHeader(12 * 1024)] });
  const line = req.split("\r\n").find((l) => l.startsWith("X-Big: "))!;
  assertEquals(line.length, 12 * 1024);
  assertEquals(req.slice(0, 16), "GET /x HTTP/1.1\r");
  assertEquals(req.slice(-4), "\r\n\r\n");
});

Deno.test("parseWrk", async (t) => {
  const report = `Running 1s test @ http://127.0.0.1:20080/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    85.11us   50.23us   2.10ms   97.00%
    Req/Sec    21.30k     1.20k   23.00k    80.00%
  21302 requests in 1.00s, 3.35MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  21290.12
Transfer/sec:      3.35MB
`;
  await t.step("full report", () => {
    const w = parseWrk(report);
    assertEquals([w.requestsPerSec, w.requests, w.seconds, w.non2xx], [21290.12, 21302, 1, 7]);
    assertEquals(w.socketErrors, { connect: 0, read: 2, write: 0, timeout: 1 });
  });
  await t.step("minutes and no error lines", () => {
    const w = parseWrk("  10 requests in 1.50m, 1KB read\nRequests/sec:      0.11\n");
    assertEquals([w.seconds, w.non2xx, w.socketErrors.read], [90, 0, 0]);
  });
  await t.step("not a wrk report", () => {
    assertThrows(() => parseWrk("unable to connect to 127.0.0.1:1 Connection refused"), HarnessError);
  });
});

Deno.test("parseH2load", async (t) => {
  const report = `finished in 10.00s, 12345.60 req/s, 1.23MB/s
requests: 123456 total, 123460 started, 123456 done, 123450 succeeded, 6 failed, 2 errored, 1 timeout
status codes: 123450 2xx, 0 3xx, 4 4xx, 2 5xx
traffic: 1.23MB (1234567) total, 100KB (102400) headers (space savings 90.00%), 400KB (409600) data
`;
  await t.step("full report", () => {
    const w = parseH2load(report);
    assertEquals([w.requestsPerSec, w.requests, w.seconds, w.non2xx], [12345.6, 123456, 10, 6]);
    assertEquals(w.socketErrors, { connect: 2, read: 6, write: 0, timeout: 1 });
  });
  await t.step("milliseconds", () => {
    const w = parseH2load(report.replace("10.00s", "250.00ms"));
    assertEquals(w.seconds, 0.25);
  });
  await t.step("not an h2load report", () => {
    assertThrows(() => parseH2load("starting benchmark...\nspawning thread #0"), HarnessError);
  });
});

Deno.test("parseAccessLog", async (t) => {
  const nginx = `10.200.1.2 40000 20443 2 200 3 "GET / HTTP/2.0" "TLSv1.3" "a \\x22quoted\\x22 agent"\n` +
    `127.0.0.1 40001 20080 1 400 150 "GET / HTTP/1.1" "" "-"\nnot a log line\n`;
  await t.step("nginx (1-based counter, \\xHH escapes)", () => {
    const [a, b, ...rest] = parseAccessLog(nginx, 1);
    assertEquals(rest.length, 0);
    assertEquals(a, {
      remoteAddr: "10.200.1.2",
      remotePort: 40000,
      serverPort: 20443,
      connRequests: 2,
      status: 200,
      bytes: 3,
      request: "GET / HTTP/2.0",
      tls: "TLSv1.3",
      userAgent: 'a "quoted" agent',
    });
    assertEquals([b.status, b.tls], [400, ""]);
  });
  await t.step("apache (%k counts from 0, '-' for no TLS)", () => {
    const [a] = parseAccessLog(`127.0.0.1 5 20081 0 200 10 "GET / HTTP/1.1" "-" "curl/7.88.1"\n`, 0);
    assertEquals([a.connRequests, a.tls, a.userAgent], [1, "", "curl/7.88.1"]);
  });
});

Deno.test("makeCert: self-signed P-256 cert with the SANs; close removes it", async () => {
  const cert = await makeCert({ altNames: ["DNS:localhost", "IP:10.200.1.1"] });
  try {
    const text = await runOk([
      requireTool("openssl", "openssl"),
      "x509",
      "-noout",
      "-text",
      "-in",
      cert.certPath,
    ]);
    assertStringIncludes(text, "Subject: CN = localhost");
    assertStringIncludes(text, "IP Address:10.200.1.1");
    assertStringIncludes(text, "prime256v1");
    const key = await run([requireTool("openssl", "openssl"), "pkey", "-noout", "-in", cert.keyPath]);
    assertEquals(key.code, 0, key.stderr);
  } finally {
    await cert.close();
  }
  await assertRejects(() => Deno.stat(cert.dir));
  await assertRejects(() => makeCert({ commonName: "bad name/with slash" }), HarnessError);
});
