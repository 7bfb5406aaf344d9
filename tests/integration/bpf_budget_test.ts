/**
 * What the BPF side stops sending once user space has what it needs (docs/bpf.md, `tc_ingress` and
 * "Raw TLS streams"), checked with real nginx traffic on loopback through the product's own loader and
 * reader:
 *  - `tc_ingress`: a keep-alive plain-HTTP connection costs no event at all — its SYN waits in syn_facts
 *    for the server's first read, and its first segment is not TLS (nothing to fingerprint) — however many
 *    requests follow; a TLS connection's PKT events cover exactly its first TLS record (the ClientHello) and
 *    nothing after it, although the client sends much more, and its SYN rides on its first read;
 *  - the raw stream of a TLS connection (nginx `read()` tracepoint, Apache `apr_socket_recv` uprobe) is
 *    copied only until the plaintext starts: a handful of events for 20 requests, while `SSL_read` carries
 *    every request and the close event's raw position still counts every byte read.
 * Needs root, nginx, apache2 and curl.
 */
import { assert, assertEquals, assertGreater } from "../../src/testing/asserts.ts";
import type { CaptureEvent, CloseEvent, DataEvent, PacketEvent } from "../../src/bpf/events.ts";
import { keptSyns, mappedLibrary, sslPairs, type TestAttach, TestLoader } from "../helpers/bpf.ts";
import { startApache, startNginx } from "../helpers/servers.ts";
import { ServerKind } from "../../src/bpf/layout.gen.ts";
import { curl } from "../helpers/clients.ts";
import { delay, HarnessError, requireRoot, requireTool, waitUntil } from "../helpers/proc.ts";
import { u32Key } from "../../src/bpf/object.ts";
import { toHex } from "../../src/parse/bytes.ts";

// Below the ephemeral range (32768–60999): a client socket elsewhere in the suite never holds these.
const NGINX = 29580;
const NGINX_TLS = 29543;
const APACHE = 29581;
// Apache's TLS port: the nginx one, once nginx has stopped.
const APACHE_TLS = NGINX_TLS;

const isData = (e: CaptureEvent): e is DataEvent => e.type === "data";
const isPkt = (e: CaptureEvent): e is PacketEvent => e.type === "pkt";
const isClose = (e: CaptureEvent): e is CloseEvent => e.type === "close";

/**
 * One curl invocation fetching every URL over one keep-alive connection; returns the client's local port
 * (the events' source port). Fails unless each answer is 200 and only the first URL connected.
 */
async function keepAliveCurl(urls: string[], extra: string[] = []): Promise<number> {
  const args = [...extra, "-w", "%{http_code} %{num_connects} %{local_port}\\n"];
  for (const u of urls) args.push("-o", "/dev/null", u);
  const r = await curl(args);
  const lines = r.stdout.trim().split("\n").map((l) => l.split(" "));
  if (r.code !== 0 || lines.length !== urls.length) {
    throw new HarnessError(`curl ${urls.length} URLs: exit ${r.code} ${r.stdout} ${r.stderr}`);
  }
  const port = lines[0][2];
  lines.forEach(([code, connects, p], i) => {
    assertEquals([code, connects, p], ["200", i === 0 ? "1" : "0", port], `curl answer ${i}: one connection`);
  });
  return Number(port);
}

/** PKT events deduplicated by offset (tc sends a retransmit again), in offset order. */
function segments(pkts: PacketEvent[]): PacketEvent[] {
  const byOffset = new Map<number, PacketEvent>();
  for (const p of pkts) if (!byOffset.has(p.offset)) byOffset.set(p.offset, p);
  return [...byOffset.values()].sort((a, b) => a.offset - b.offset);
}

/**
 * Two connections from one client port: 127.0.0.1 → the TLS port, 127.0.0.2 → the plain port. The plain
 * one's request is answered first (its status line is printed); then the TLS one sends its "hello" in the
 * given parts, printing "part N" after each and waiting for a line on stdin before going on; both close.
 */
const SHARED_PORT_PY = `
import json, socket, sys, time
a = json.loads(sys.argv[1])
def conn(local, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((local, a['sport']))
    s.connect(('127.0.0.1', port))
    return s
def say(line):
    sys.stdout.write(line + '\\n')
    sys.stdout.flush()
tls = conn('127.0.0.1', a['tls'])
plain = conn('127.0.0.2', a['plain'])
plain.sendall(b'GET /shared-port HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n')
say(plain.recv(4096).decode('latin-1').split('\\r\\n')[0])
time.sleep(0.05)
for i, part in enumerate(a['hello']):
    tls.sendall(bytes.fromhex(part))
    say('part %d' % (i + 1))
    sys.stdin.readline()
tls.close()
plain.close()
`;

/** The TLS request targets: 20 requests on one connection (a query: Apache serves only "/"). */
const TLS_PATHS = Array.from({ length: 20 }, (_, i) => `/?tls-${i}`);

/**
 * tc's view of one TLS connection: its SYN on the server's first read (the raw one, at position 0), PKT
 * events covering exactly [0, 5 + record length) of the first record (the ClientHello), nothing past it.
 * Returns the record's end and the PKT figures.
 */
function checkTcTls(conn: CaptureEvent[]): { recordEnd: number; segs: PacketEvent[]; hello: Uint8Array } {
  const withSyn = conn.filter(isData).filter((e) => e.syn !== undefined);
  assertEquals(withSyn.map((e) => [e.plaintext, e.pos]), [[false, 0]], "events carrying the SYN");
  assertGreater(withSyn[0].syn!.window, 0, "the SYN's window");
  const segs = segments(conn.filter(isPkt));
  assertGreater(segs.length, 0, "PKT events");
  const hello = segs[0].bytes;
  assertEquals(segs[0].offset, 0, "first PKT event at stream offset 0");
  assert(hello.length >= 6, `first PKT event holds ${hello.length} bytes`);
  // Handshake record (16 03 xx) whose first message is a ClientHello (type 1).
  assertEquals([hello[0], hello[1], hello[5]], [0x16, 0x03, 0x01], "ClientHello record at offset 0");
  const recordEnd = 5 + (hello[3] << 8 | hello[4]);
  let covered = 0;
  for (const s of segs) {
    assertEquals(s.offset, covered, `PKT event at ${s.offset} after ${covered} bytes (gap or overlap)`);
    covered += s.bytes.length;
    // A segment reaching past the record is cut at its end.
    assertEquals(s.truncated, s.offset + s.total > recordEnd, `PKT at ${s.offset}: truncated flag`);
  }
  assertEquals(covered, recordEnd, `PKT bytes = 5 + ClientHello record length (${segs.length} segments)`);
  return { recordEnd, segs, hello };
}

/**
 * The raw stream of one TLS connection (rawHook) is copied until the plaintext starts, then only counted:
 * at most 5 raw events for 20 requests, gap-free from the ClientHello on; the plaintext carries every
 * request; the close event's positions are exact. Returns a line of figures.
 */
function checkRawCut(conn: CaptureEvent[], rawHook: string, what: string): string {
  const closes = conn.filter(isClose);
  assertEquals(closes.length, 1, `${what}: close events`);
  const close = closes[0];
  const raw = conn.filter(isData).filter((e) => !e.plaintext).sort((a, b) => a.pos - b.pos);
  const plain = conn.filter(isData).filter((e) => e.plaintext).sort((a, b) => a.pos - b.pos);
  for (const e of raw) assertEquals(e.hook, rawHook, `${what}: raw event hook`);
  for (const e of plain) {
    assert(e.hook === "ssl_read" || e.hook === "ssl_read_ex", `${what}: plaintext from hook ${e.hook}`);
  }
  assertGreater(raw.length, 0, `${what}: raw events`);
  assert(
    raw.length <= 5,
    `${what}: ${raw.length} raw DATA events for 20 requests (want ≤ 5, not one per request)`,
  );
  let rawSeen = 0;
  for (const e of raw) {
    assertEquals(
      e.pos,
      rawSeen,
      `${what}: raw chunk at ${e.pos} after ${rawSeen} bytes (gap in the copied part)`,
    );
    assert(!e.readFailed, `${what}: raw chunk at ${e.pos} unread`);
    rawSeen += e.bytes.length;
  }
  const r0 = raw[0].bytes;
  assertEquals([r0[0], r0[1], r0[5]], [0x16, 0x03, 0x01], `${what}: raw stream starts with a ClientHello`);

  // Plaintext: every request, gap-free, its length the close event's plaintext position.
  let plainSeen = 0;
  for (const e of plain) {
    assertEquals(e.pos, plainSeen, `${what}: plaintext chunk at ${e.pos} after ${plainSeen} bytes`);
    assert(!e.truncated && !e.readFailed, `${what}: plaintext chunk at ${e.pos} truncated or unread`);
    plainSeen += e.bytes.length;
  }
  const text = new TextDecoder("latin1").decode(new Uint8Array(plain.flatMap((e) => [...e.bytes])));
  assertEquals(
    [...text.matchAll(/^GET (\S+) HTTP\/1\.1\r$/gm)].map((m) => m[1]),
    TLS_PATHS,
    `${what}: requests in the plaintext stream`,
  );
  assertEquals(close.posPlaintext, text.length, `${what}: close plaintext position = plaintext bytes seen`);

  // Positions stay exact: the close counts every raw byte read, the uncopied ones included. Requests 2..20
  // came in TLS records read after the plaintext started, each record longer than its plaintext.
  const second = text.indexOf("GET /?tls-1 ");
  assertGreater(second, 0, `${what}: second request in the plaintext`);
  assert(
    close.posRaw - rawSeen >= text.length - second,
    `${what}: close pos_raw ${close.posRaw}, ${rawSeen} raw bytes copied, yet the ${text.length - second} ` +
      `plaintext bytes of requests 2..20 must have come in raw records read uncopied`,
  );
  return `${raw.length} raw DATA (${rawSeen} B copied of pos_raw ${close.posRaw}), ${plain.length} plaintext ` +
    `DATA (${text.length} B)`;
}

/** Loads, runs the 20-request TLS curl against port, waits for its close; the connection's events. */
async function tlsRun(
  o: { attach: TestAttach[]; pids: number[]; kind?: number; port: number; closeWaitMs: number },
): Promise<CaptureEvent[]> {
  await using l = TestLoader.open({ attach: o.attach, pids: o.pids, kind: o.kind, listenPorts: [o.port] });
  l.reader.start();
  const urls = TLS_PATHS.map((p) => `https://127.0.0.1:${o.port}${p}`);
  const client = await keepAliveCurl(urls, ["-k", "--http1.1"]);
  await waitUntil(
    () => l.events.some((e) => isClose(e) && e.srcPort === client),
    o.closeWaitMs,
    "close event of the TLS connection",
  );
  await delay(100);
  l.detach();
  await l.reader.close();
  assertEquals(l.drops(), {}, "drops (SSL_NO_FD, NO_STASH…)");
  assertEquals(l.decodeErrors, [], "records the decoder refused");
  return l.events.filter((e) => e.srcPort === client && e.dstPort === o.port);
}

Deno.test({
  name:
    "BPF budgets: tc_ingress stops after the first segment / TLS record; raw TLS streams stop at plaintext",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  requireRoot("bpf_budget_test");
  {
    await using nginx = await startNginx({ port: NGINX, tlsPort: NGINX_TLS, workers: 1 });
    const workers = nginx.pids().workers;

    await t.step(
      "tc_ingress: 50 keep-alive plain-HTTP requests → no event (the SYN kept), no PKT",
      async () => {
        await using l = TestLoader.open({
          attach: [{ program: "tc_ingress", tc: "lo" }],
          pids: workers,
          listenPorts: [NGINX],
        });
        const paths = Array.from({ length: 50 }, (_, i) => `/ka-${i}`);
        const port = await keepAliveCurl(paths.map((p) => `http://127.0.0.1:${NGINX}${p}`));
        const log = await nginx.waitForRequests(50);
        // The server got 50 requests on that connection in 50 segments (curl waits for each answer): a
        // per-segment tc program would have sent ~50 PKT events.
        assertEquals(
          log.filter((e) => e.remotePort === port).map((e) => e.request.split(" ")[1]),
          paths,
          "access log of the keep-alive connection",
        );
        await delay(100);
        l.detach();
        l.drainAll();
        assertEquals(l.drops(), {}, "drops");
        assertEquals(l.decodeErrors, [], "records the decoder refused");
        const conn = l.events.filter((e) => e.srcPort === port && e.dstPort === NGINX);
        // The SYN waits in syn_facts for the server's first read (not attached here); the first segment is
        // plain HTTP: tc sends nothing for it (user space would find nothing to fingerprint) and forgets the
        // flow, so no later segment of the connection is sent either.
        const kept = keptSyns(l.obj).filter((s) => s.srcPort === port && s.dstPort === NGINX);
        assertEquals(kept.length, 1, "SYNs kept for the connection");
        assertGreater(kept[0].options.length, 0, "the SYN's options");
        assertEquals(conn.map((e) => e.type), [], "events of the connection");
      },
    );

    await t.step(
      "tc_ingress: a client port shared by a plain and a TLS connection keeps the TLS one's hello",
      async () => {
        // tc looks the flow up only while its client port counts a live flow (flow_ports). Two connections
        // from one port (two local addresses): the plain one's first segment ends its flow; the TLS one's
        // hello, sent after that in two segments, must still be seen. The TLS flow ends once its first
        // record was seen whole, with the connection still open: the port's count is then 0.
        await using l = TestLoader.open({
          attach: [{ program: "tc_ingress", tc: "lo" }],
          pids: workers,
          listenPorts: [NGINX, NGINX_TLS],
        });
        const sport = 20_000 + Math.floor(Math.random() * 5_000);
        // A TLS handshake record with a 10-byte body (tc checks 16 03 and reads the length): 15 bytes, sent
        // as 8 + 7.
        const hello = ["160301000a010000", "06030300000000"];
        const count = () => {
          const v = l.obj.map("flow_ports").lookup(u32Key(sport));
          return v && new DataView(v.buffer).getUint32(0, true);
        };
        const child = new Deno.Command(requireTool("python3", "python3"), {
          args: ["-c", SHARED_PORT_PY, JSON.stringify({ sport, tls: NGINX_TLS, plain: NGINX, hello })],
          stdin: "piped",
          stdout: "piped",
          stderr: "inherit",
        }).spawn();
        const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
        let buffered = "";
        const nextLine = async (): Promise<string> => {
          while (!buffered.includes("\n")) {
            const { value, done } = await lines.read();
            if (done) throw new HarnessError(`shared-port client ended early: ${buffered}`);
            buffered += value;
          }
          const i = buffered.indexOf("\n");
          const line = buffered.slice(0, i);
          buffered = buffered.slice(i + 1);
          return line;
        };
        const stdin = child.stdin.getWriter();
        const go = () => stdin.write(new TextEncoder().encode("\n"));
        let answer: string, counts: (number | undefined)[];
        try {
          answer = await nextLine();
          assertEquals(await nextLine(), "part 1", "the client's progress");
          await delay(50);
          counts = [count()];
          await go();
          assertEquals(await nextLine(), "part 2", "the client's progress");
          await delay(50);
          counts.push(count());
          await go();
          assertEquals((await child.status).code, 0, "the shared-port client's exit code");
        } finally {
          await stdin.close().catch(() => {});
          try {
            child.kill();
          } catch { /* exited */ }
        }
        assert(answer.startsWith("HTTP/1.1 "), `the plain connection was answered: ${answer.slice(0, 80)}`);
        // After the plain connection's first bytes: the TLS flow alone; after the record's last byte: none.
        assertEquals(counts, [1, 0], "the port's flow count after each part of the hello");
        await delay(100);
        l.detach();
        l.drainAll();
        assertEquals(l.drops(), {}, "drops");
        const mine = l.events.filter((e) => e.srcPort === sport);
        const syns = keptSyns(l.obj).filter((s) => s.srcPort === sport).map((s) =>
          `${s.srcAddr}>${s.dstPort}`
        );
        assertEquals(
          syns.sort(),
          [`127.0.0.1>${NGINX_TLS}`, `127.0.0.2>${NGINX}`],
          "one SYN kept per connection",
        );
        const pkts = mine.filter(isPkt);
        assertEquals(
          pkts.map((p) => [p.srcAddr, p.dstPort, p.offset]),
          [["127.0.0.1", NGINX_TLS, 0], ["127.0.0.1", NGINX_TLS, 8]],
          "PKT events: the two parts of the hello",
        );
        assertEquals(pkts.map((p) => toHex(p.bytes)), hello);
        assertEquals(count(), 0, "the port's flow count after both closed");
      },
    );

    await t.step(
      "nginx TLS, 20 requests: tc stops at the ClientHello record, raw read() at the plaintext",
      async () => {
        const libssl = mappedLibrary(workers[0], /^libssl\.so\.(3|1\.1)(\.\d+)*$/);
        const conn = await tlsRun({
          // The read pair before the SSL programs: they learn the fd from the read entered inside SSL_read.
          attach: [
            { program: "tc_ingress", tc: "lo" },
            { program: "tp_enter_read" },
            { program: "tp_exit_read" },
            { program: "tp_enter_close" },
            ...sslPairs(libssl),
          ],
          pids: workers,
          port: NGINX_TLS,
          closeWaitMs: 5000,
        });
        const { recordEnd, segs, hello } = checkTcTls(conn);
        const close = conn.find(isClose)!;
        // The client sent far more than the hello (Finished, 20 requests, close_notify): tc sent none of it.
        assertGreater(close.posRaw, recordEnd + 20 * 20, "raw bytes the server read past the hello");
        const figures = checkRawCut(conn, "read_tracepoint", "nginx");
        const raw0 = conn.filter(isData).find((e) => !e.plaintext && e.pos === 0)!;
        assertEquals(
          Array.from(raw0.bytes.subarray(0, recordEnd)),
          Array.from(hello.subarray(0, recordEnd)),
          "the raw stream's ClientHello = the one tc saw",
        );
        console.log(
          `nginx TLS connection: ${segs.length} PKT (${recordEnd} B = the first record), ${figures}`,
        );
      },
    );
  }

  await t.step("Apache TLS, 20 requests: raw apr_socket_recv stream stops at the plaintext", async () => {
    await using apache = await startApache({ port: APACHE, tlsPort: APACHE_TLS, workers: 1 });
    const children = apache.pids().workers;
    const libssl = mappedLibrary(children[0], /^libssl\.so\.(3|1\.1)(\.\d+)*$/);
    const libapr = mappedLibrary(children[0], /^libapr-1\.so\.0(\.\d+)*$/);
    const conn = await tlsRun({
      // APR teaches the SSL programs the fd (SSL_read's BIO reads through apr_socket_recv).
      attach: [
        { program: "uprobe_apr_socket_recv_entry", path: libapr, func: "apr_socket_recv", retprobe: false },
        { program: "uretprobe_apr_socket_recv", path: libapr, func: "apr_socket_recv", retprobe: true },
        { program: "tp_enter_close" },
        ...sslPairs(libssl),
      ],
      pids: children,
      kind: ServerKind.APACHE,
      port: APACHE_TLS,
      // Apache closes after its lingering close.
      closeWaitMs: 8000,
    });
    console.log(`Apache TLS connection: ${checkRawCut(conn, "uprobe", "apache")}`);
  });
});
