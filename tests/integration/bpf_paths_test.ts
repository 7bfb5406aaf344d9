/**
 * The BPF object's delivery paths, read through the product's own user side (BpfObject, RingReader,
 * PerfReader, decodeEvent) against real nginx and Apache on loopback:
 *  - every event lost to a full ring buffer is counted in `drops` (received + drops == attempted, the
 *    attempts counted independently from nginx's access log);
 *  - the perf buffer fallback and `has_task_btf = 0` deliver byte-identical events to the ring buffer,
 *    and perf's padded records are cut at `data_len`;
 *  - the SSL uprobes, attached to the libssl the servers map, give the plaintext of HTTP/1.1 and HTTP/2
 *    over TLS on the right fd and 4-tuple, beside the raw stream that starts with the ClientHello.
 * Needs root, nginx, apache2, wrk and curl.
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import type { CaptureEvent, CloseEvent, DataEvent } from "../../src/bpf/events.ts";
import { CLOSE_EVENT, DATA_EVENT, ServerKind, TracedBits } from "../../src/bpf/layout.gen.ts";
import { pageSize } from "../../src/bpf/ffi.ts";
import { u32Key } from "../../src/bpf/object.ts";
import { eventKey, mappedLibrary, sslPairs, type TestAttach, TestLoader } from "../helpers/bpf.ts";
import { type AccessEntry, startApache, startNginx, type WebServer } from "../helpers/servers.ts";
import { bigHeader, curl, httpRequest, rawHttp, wrk } from "../helpers/clients.ts";
import { delay, HarnessError, requireRoot, waitUntil } from "../helpers/proc.ts";

const NGINX = 25080;
const NGINX_TLS = 25443;
const APACHE = 25081;
const APACHE_TLS = 25444;

const RECVFROM: TestAttach[] = [
  { program: "tp_sys_enter_recvfrom" },
  { program: "tp_sys_exit_recvfrom" },
  { program: "tp_enter_close" },
];

/** The exit alone, arguments from the task's saved registers (bpf_task_pt_regs, 5.15+). */
const RECVFROM_REGS: TestAttach[] = [{ program: "tp_exit_recvfrom_regs" }, { program: "tp_enter_close" }];

const isData = (e: CaptureEvent): e is DataEvent => e.type === "data";
const isClose = (e: CaptureEvent): e is CloseEvent => e.type === "close";
const sorted = (xs: string[]) => [...xs].sort();

/** The access log once it stopped growing (lines are written after each response). */
async function settledLog(srv: WebServer): Promise<AccessEntry[]> {
  // Compare sizes, parse once: after the wrk steps the log holds ~10^5 lines.
  const size = () => Deno.stat(srv.accessLogPath).then((s) => s.size, () => 0);
  let prev = -1;
  for (let i = 0; i < 50; i++) {
    const now = await size();
    if (now === prev) break;
    prev = now;
    await delay(150);
  }
  return await srv.accessLog();
}

/** curl over TLS (self-signed: -k); returns the client's local port, i.e. the event's source port. */
async function tlsCurl(url: string, proto: "--http1.1" | "--http2"): Promise<number> {
  const r = await curl(["-k", proto, "-o", "/dev/null", "-w", "%{http_code} %{local_port}", url]);
  const m = /^200 (\d+)$/.exec(r.stdout.trim());
  if (r.code !== 0 || !m) {
    throw new HarnessError(`curl ${proto} ${url}: exit ${r.code} ${r.stdout} ${r.stderr}`);
  }
  return Number(m[1]);
}

/** The bytes of one stream in position order; fails on a gap or an overlap (a lost or repeated chunk). */
function streamBytes(events: DataEvent[], what: string): Uint8Array {
  const evs = [...events].sort((a, b) => a.pos - b.pos);
  const out: number[] = [];
  for (const e of evs) {
    assertEquals(e.pos, out.length, `${what}: chunk at ${e.pos} after ${out.length} bytes (gap or repeat)`);
    assert(!e.truncated && !e.readFailed, `${what}: chunk at ${e.pos} truncated or unread`);
    out.push(...e.bytes);
  }
  return new Uint8Array(out);
}

/**
 * One TLS connection as the SSL test expects it: raw stream (the given hook) from the ClientHello on,
 * plaintext on the same fd and tuple starting with the request, both streams gap-free, and a close event
 * carrying both final positions.
 */
function checkTlsConnection(
  events: CaptureEvent[],
  o: { clientPort: number; serverPort: number; rawHook: string; plaintextStart: string; what: string },
): void {
  const conn = events.filter((e) => e.srcPort === o.clientPort && e.dstPort === o.serverPort);
  const raw = conn.filter(isData).filter((e) => !e.plaintext);
  const plain = conn.filter(isData).filter((e) => e.plaintext);
  assertGreater(raw.length, 0, `${o.what}: no raw events for client port ${o.clientPort}`);
  assertGreater(plain.length, 0, `${o.what}: no plaintext events for client port ${o.clientPort}`);
  for (const e of conn) {
    assertEquals(
      [e.family, e.srcAddr, e.dstAddr, e.pid, e.fd],
      ["ipv4", "127.0.0.1", "127.0.0.1", raw[0].pid, raw[0].fd],
      `${o.what}: ${e.type}/${e.hook} event tuple/fd`,
    );
  }
  for (const e of raw) assertEquals(e.hook, o.rawHook, `${o.what}: raw event hook`);
  for (const e of plain) {
    assert(e.hook === "ssl_read" || e.hook === "ssl_read_ex", `${o.what}: plaintext from hook ${e.hook}`);
  }
  const rawBytes = streamBytes(raw, `${o.what} raw`);
  // TLS handshake record (0x16, version 3.x) holding a ClientHello (handshake type 1) at position 0.
  assertEquals([rawBytes[0], rawBytes[1], rawBytes[5]], [0x16, 0x03, 0x01], `${o.what}: ClientHello at 0`);
  const text = new TextDecoder("latin1").decode(streamBytes(plain, `${o.what} plaintext`));
  assert(
    text.startsWith(o.plaintextStart),
    `${o.what}: plaintext starts ${JSON.stringify(text.slice(0, 40))}, want ${
      JSON.stringify(o.plaintextStart)
    }`,
  );
  const closes = conn.filter(isClose);
  assertEquals(closes.length, 1, `${o.what}: one close event`);
  assertEquals(closes[0].posPlaintext, text.length, `${o.what}: close position = plaintext bytes seen`);
  // A raw TLS stream is copied only until its plaintext begins (docs/bpf.md, "Raw TLS streams"): the
  // close position also counts what was read after that (the client's close_notify), never less.
  const uncopied = closes[0].posRaw - rawBytes.length;
  assert(
    uncopied >= 0 && uncopied < 100,
    `${o.what}: raw close position ${closes[0].posRaw}, ${rawBytes.length} bytes seen`,
  );
}

/**
 * Access-log lines (format `ja4`: remote_addr remote_port server_port connection_requests …) → per client port,
 * the request count of each connection it served, in order ($connection_requests 1 starts a connection).
 */
function connectionsByPort(lines: string[]): Map<number, number[]> {
  const perPort = new Map<number, number[]>();
  for (const line of lines) {
    const f = line.split(" ", 4);
    const port = Number(f[1]), nth = Number(f[3]);
    let conns = perPort.get(port);
    if (conns === undefined) perPort.set(port, conns = []);
    if (nth === 1 || conns.length === 0) conns.push(0);
    conns[conns.length - 1]++;
  }
  return perPort;
}

Deno.test("connectionsByPort: a client port reused by a later connection counts two connections", () => {
  const lines = ["127.0.0.1 5000 80 1 200", "127.0.0.1 5001 80 1 200", "127.0.0.1 5000 80 2 200"]
    .concat(["127.0.0.1 5000 80 1 200", "127.0.0.1 5001 80 2 200", "127.0.0.1 5000 80 2 200"]);
  assertEquals([...connectionsByPort(lines)], [[5000, [2, 2]], [5001, [2]]]);
});

/**
 * wrk against nginx while a reader with one page of buffer drains slowly: the events received plus the
 * BPF drop counter must equal the events attempted, counted from the access log (one 41-byte
 * single-chunk recvfrom per request, one close per connection).
 */
async function dropAccounting(
  nginx: WebServer,
  workers: number[],
  kind: "ringbuf" | "perfbuf",
): Promise<void> {
  const reason = kind === "ringbuf" ? "RINGBUF" : "PERFBUF";
  await settledLog(nginx);
  const before = (await Deno.stat(nginx.accessLogPath)).size;
  await using l = kind === "ringbuf"
    ? TestLoader.open({ attach: RECVFROM, pids: workers, ringBytes: pageSize() })
    : TestLoader.open({ attach: RECVFROM, pids: workers, ringbuf: false, perfPages: 1 });
  // A slow reader: a few dozen records every 50 ms while wrk sends tens of thousands of requests/s.
  const timer = setInterval(() => l.reader.drain(16), 50);
  let sent;
  try {
    sent = await wrk({ url: nginx.url, connections: 8, threads: 2, duration: 2 });
  } finally {
    clearInterval(timer);
  }
  // Per client port, the request count of each connection that used it, in order: a port can serve several
  // connections in one run (nginx ends a keep-alive connection after 1000 requests, wrk reconnects and the
  // kernel may hand out the same ephemeral port again).
  let requests = 0, perPort = new Map<number, number[]>(), connections = 0, attempted = 0;
  let received = 0, drops: Record<string, number> = {};
  const count = async () => {
    l.drainAll();
    received = l.received.length;
    drops = l.drops();
    // ~10^5 lines: only this step's bytes; the client port (2nd field) and $connection_requests (4th) of
    // each line: 1 starts a connection.
    const text = new TextDecoder().decode((await Deno.readFile(nginx.accessLogPath)).subarray(before));
    const lines = text.split("\n").filter((x) => x);
    perPort = connectionsByPort(lines);
    connections = [...perPort.values()].reduce((n, c) => n + c.length, 0);
    requests = lines.length;
    attempted = requests + connections;
    return `${received}/${drops[reason]}/${attempted}`;
  };
  // nginx logs each request and closes each connection (on wrk's EOF) a little after wrk exits, later
  // on a loaded host: wait until the log and the counts stay the same for a while.
  let prev = "";
  for (const deadline = Date.now() + 8000; Date.now() < deadline; await delay(300)) {
    const now = await count();
    if (now === prev && received + (drops[reason] ?? 0) === attempted) break;
    prev = now;
  }
  l.detach();
  await count();
  const evs = l.events;
  const closes = evs.filter(isClose);
  const figures = `${kind}: wrk ${sent.requests} requests; log ${requests} requests on ${connections} ` +
    `connections (${perPort.size} client ports); received ${received} (${closes.length} close); drops ${
      JSON.stringify(drops)
    }; ` +
    `reader lost ${l.reader.stats.lost}`;
  console.log(figures);
  for (const e of evs) assertEquals(e.dstPort, NGINX, `event on port ${e.dstPort}`);
  for (const e of evs.filter(isData)) {
    assertEquals([e.total, e.bytes.length, e.pos % 41], [41, 41, 0], `wrk request read: ${figures}`);
  }
  // A close carries the stream position, counted in BPF even for the chunks that were lost: the request
  // count of one of the connections that port served.
  for (const e of closes) {
    const conns = perPort.get(e.srcPort) ?? [];
    assert(
      conns.some((n) => e.posRaw === 41 * n),
      `close of port ${e.srcPort} at ${e.posRaw}, connections of ${conns.join(", ")} requests: ${figures}`,
    );
  }
  assertEquals(l.decodeErrors, [], "records the decoder refused");
  assertGreater(drops[reason] ?? 0, 0, `the buffer never filled: ${figures}`);
  assertGreater(received, 0, figures);
  assertEquals(Object.keys(drops).sort(), ["LOST_READ", reason], `only buffer-full drops: ${figures}`);
  assertEquals(received + drops[reason], attempted, `every lost event counted: ${figures}`);
  // In requests: each wrk request is one single-chunk read, so reads received + lost reads = requests.
  assertEquals(
    evs.filter(isData).length + drops.LOST_READ,
    requests,
    `every lost request counted: ${figures}`,
  );
  // The perf buffer's own lost notices lag: the kernel writes one only before the next sample that fits
  // on that CPU, so the last overflow stays unreported once traffic stops. `drops` is the exact count.
  if (kind === "perfbuf") {
    assertGreater(l.reader.stats.lost, 0, `perf lost notices: ${figures}`);
    assert(l.reader.stats.lost <= drops[reason], `perf lost notices ≤ drops[PERFBUF]: ${figures}`);
  }
}

/** The probe counters of a traced_pids value (enum ja4_traced_bits): [SSL_* entries, apr_socket_recv entries]. */
function probeCounters(l: TestLoader, pid: number): [number, number] {
  const v = l.obj.map("traced_pids").lookup(u32Key(pid));
  if (!v) throw new HarnessError(`pid ${pid} not in traced_pids`);
  const n = new DataView(v.buffer, v.byteOffset).getUint32(0, true);
  const field = (shift: number) => (n >>> shift) & ((1 << TracedBits.COUNTER_BITS) - 1);
  return [field(TracedBits.SSL_SHIFT), field(TracedBits.APR_SHIFT)];
}

/** nginx over TLS: the SSL probes learn the fd from the read() inside SSL_read (`reads`: its programs). */
async function nginxTls(workers: number[], reads: string[]): Promise<void> {
  const libssl = mappedLibrary(workers[0], /^libssl\.so\.(3|1\.1)(\.\d+)*$/);
  await using l = TestLoader.open({
    // The read programs first: the SSL programs learn the fd from the read entered inside SSL_read.
    attach: [...reads.map((program) => ({ program })), { program: "tp_enter_close" }, ...sslPairs(libssl)],
    pids: workers,
  });
  l.reader.start();
  const h1 = await tlsCurl(`https://127.0.0.1:${NGINX_TLS}/h1`, "--http1.1");
  const h2 = await tlsCurl(`https://127.0.0.1:${NGINX_TLS}/h2`, "--http2");
  await waitUntil(
    () => [h1, h2].every((p) => l.events.some((e) => e.type === "close" && e.srcPort === p)),
    5000,
    "close events of both TLS connections",
  );
  // The worker that served marked itself at its first SSL_read entry (its reads then look up the SSL stash);
  // no apr_socket_recv ran in nginx, so its reads skip that lookup.
  const served = new Set(l.events.filter((e) => e.type === "data").map((e) => e.pid));
  for (const pid of served) {
    const [ssl, apr] = probeCounters(l, pid);
    assertGreater(ssl, 0, `SSL counter of nginx worker ${pid}`);
    assertEquals(apr, 0, `APR counter of nginx worker ${pid}`);
  }
  l.detach();
  await l.reader.close();
  assertEquals(l.drops(), {}, "drops (SSL_NO_FD, NO_STASH…)");
  assertEquals(l.decodeErrors, [], "records the decoder refused");
  const common = { serverPort: NGINX_TLS, rawHook: "read_tracepoint" };
  checkTlsConnection(l.events, {
    ...common,
    clientPort: h1,
    plaintextStart: "GET /h1 HTTP/1.1\r\n",
    what: "nginx h1",
  });
  checkTlsConnection(l.events, {
    ...common,
    clientPort: h2,
    plaintextStart: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    what: "nginx h2",
  });
}

Deno.test({
  name: "BPF delivery paths (ring drops, perf, has_task_btf=0, SSL) through the TypeScript reader",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  requireRoot("bpf_paths_test");
  await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 2 });
  const workers = nginx.pids().workers;

  await t.step(
    "perf buffer, has_task_btf=0 and the exit-only program deliver the ring buffer's events",
    async () => {
      const before = (await settledLog(nginx)).length;
      await using ring = TestLoader.open({ attach: RECVFROM, pids: workers });
      await using perf = TestLoader.open({ attach: RECVFROM, pids: workers, ringbuf: false });
      await using noBtf = TestLoader.open({
        attach: RECVFROM,
        pids: workers,
        globals: { has_task_btf: false },
      });
      await using regs = TestLoader.open({ attach: RECVFROM_REGS, pids: workers });
      for (const l of [ring, perf, noBtf, regs]) l.reader.start();
      // Keep-alive, HTTP/1.0, pipelining and a header big enough to be read in a 2-chunk recvfrom.
      const base = `http://127.0.0.1:${NGINX}`;
      assertEquals((await curl(["-o", "/dev/null", `${base}/a`, `${base}/b?x=1`, `${base}/c`])).code, 0);
      assertEquals((await curl(["--http1.0", "-o", "/dev/null", `${base}/ten`])).code, 0);
      const pipelined = Array.from({ length: 20 }, (_, i) => httpRequest({ path: `/p${i}` })).join("");
      assertEquals((await rawHttp("127.0.0.1", NGINX, pipelined, { responses: 20 })).responses.length, 20);
      const big = httpRequest({ path: "/big", headers: [bigHeader(7000)] });
      assertEquals((await rawHttp("127.0.0.1", NGINX, big)).responses[0]?.status, 200);
      const log = (await settledLog(nginx)).slice(before);
      assertEquals(log.length, 25, "access log lines");
      // Every connection closed (4 of them): then nothing more is coming.
      await waitUntil(() => ring.events.filter(isClose).length >= 4, 5000, "4 close events (ring)");
      await delay(100);
      for (const l of [ring, perf, noBtf, regs]) l.detach();
      for (const l of [ring, perf, noBtf, regs]) await l.reader.close();

      for (
        const [name, l] of [["ring", ring], ["perf", perf], ["has_task_btf=0", noBtf], [
          "exit-only",
          regs,
        ]] as const
      ) {
        assertEquals(l.drops(), {}, `${name}: drops`);
        assertEquals(l.decodeErrors, [], `${name}: records the decoder refused`);
      }
      const ref = ring.events;
      const data = ref.filter(isData);
      assertEquals(ref.filter(isClose).length, 4, "close events");
      assert(data.some((e) => e.offset > 0), "a multi-chunk call (the big header)");
      assertGreater(data.length, 6, "data events");
      const refKeys = sorted(ref.map(eventKey));
      assertEquals(sorted(perf.events.map(eventKey)), refKeys, "perf buffer events == ring buffer events");
      assertEquals(
        sorted(noBtf.events.map(eventKey)),
        refKeys,
        "has_task_btf=0 events == ring buffer events",
      );
      assertEquals(sorted(regs.events.map(eventKey)), refKeys, "exit-only events == entry/exit pair events");

      // The ring delivers exactly fixed part + data_len; perf rounds the sample up (size + 4 ≡ 0 mod 8)
      // and the decoder still takes data_len bytes.
      const fixed = (e: CaptureEvent) => e.type === "data" ? DATA_EVENT.fields.data.offset : CLOSE_EVENT.size;
      for (const r of ring.received) {
        const len = fixed(r.event) + (isData(r.event) ? r.event.bytes.length : 0);
        assertEquals(r.recordLength, len, "ring record length");
      }
      let padded = 0;
      for (const r of perf.received) {
        const len = fixed(r.event) + (isData(r.event) ? r.event.bytes.length : 0);
        assert(r.recordLength >= len && r.recordLength < len + 8, `perf record ${r.recordLength} for ${len}`);
        assertEquals((r.recordLength + 4) % 8, 0, "perf sample size alignment");
        if (r.recordLength > len) padded++;
      }
      assertGreater(padded, 0, "perf padded some records (so data_len is what cut them)");
    },
  );

  for (
    const reads of [["tp_enter_read", "tp_exit_read"], ["tp_exit_read_regs"]]
  ) {
    await t.step(
      `nginx HTTPS: SSL_read plaintext and the raw read stream (${reads.join(" + ")})`,
      async () => {
        await nginxTls(workers, reads);
      },
    );
  }
  await t.step("one-page ring buffer under wrk: received + drops[RINGBUF] == attempted", async () => {
    await dropAccounting(nginx, workers, "ringbuf");
  });

  await t.step("one-page perf buffer under wrk: received + drops[PERFBUF] == attempted", async () => {
    await dropAccounting(nginx, workers, "perfbuf");
  });

  await t.step("Apache HTTPS: APR raw stream + SSL_read plaintext", async () => {
    await using apache = await startApache({ port: APACHE, tlsPort: APACHE_TLS, workers: 2 });
    const children = apache.pids().workers;
    const libssl = mappedLibrary(children[0], /^libssl\.so\.(3|1\.1)(\.\d+)*$/);
    const libapr = mappedLibrary(children[0], /^libapr-1\.so\.0(\.\d+)*$/);
    await using l = TestLoader.open({
      // APR teaches the SSL programs the fd (SSL_read's BIO reads through apr_socket_recv).
      attach: [
        { program: "uprobe_apr_socket_recv_entry", path: libapr, func: "apr_socket_recv", retprobe: false },
        { program: "uretprobe_apr_socket_recv", path: libapr, func: "apr_socket_recv", retprobe: true },
        { program: "tp_enter_close" },
        ...sslPairs(libssl),
      ],
      pids: children,
      kind: ServerKind.APACHE,
    });
    l.reader.start();
    const h1 = await tlsCurl(`https://127.0.0.1:${APACHE_TLS}/`, "--http1.1");
    const h2 = await tlsCurl(`https://127.0.0.1:${APACHE_TLS}/`, "--http2");
    await waitUntil(
      () => [h1, h2].every((p) => l.events.some((e) => e.type === "close" && e.srcPort === p)),
      8000,
      "close events of both TLS connections (Apache closes after lingering)",
    );
    const served = new Set(l.events.filter((e) => e.type === "data").map((e) => e.pid));
    for (const pid of served) {
      assertGreater(probeCounters(l, pid)[1], 0, `APR counter of Apache child ${pid}`);
    }
    l.detach();
    await l.reader.close();
    assertEquals(l.drops(), {}, "drops (SSL_NO_FD, NO_STASH…)");
    assertEquals(l.decodeErrors, [], "records the decoder refused");
    const common = { serverPort: APACHE_TLS, rawHook: "uprobe" };
    checkTlsConnection(l.events, {
      ...common,
      clientPort: h1,
      plaintextStart: "GET / HTTP/1.1\r\n",
      what: "apache h1",
    });
    checkTlsConnection(l.events, {
      ...common,
      clientPort: h2,
      plaintextStart: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      what: "apache h2",
    });
  });
});
