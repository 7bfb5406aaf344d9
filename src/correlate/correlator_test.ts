import { assert, assertEquals, assertGreater } from "../testing/asserts.ts";
import { Correlator, type HelloFacts, type Tuple } from "./correlator.ts";
import type { ConnTuple } from "../capture/requests.ts";
import { connKeyOf } from "../capture/connkey.ts";
import { emptyRow, type Row } from "../sink/row.ts";

const T0 = Date.UTC(2025, 0, 2, 3, 4, 5, 678);

function tup(n: number, dst_port = 443): Tuple {
  return {
    src: `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`,
    src_port: 1024 + (n % 60000),
    dst: "10.0.0.1",
    dst_port,
  };
}
function hello(n: number): HelloFacts {
  return { ja4: `t13d_ja4_${n}`, ja4_r: `raw_${n}`, tls_server_name: `h${n}.example` };
}
function req(path: string, extra: Partial<Row> = {}): Row {
  return {
    ...emptyRow(),
    server: "nginx",
    capture: "uprobe",
    method: "GET",
    path,
    http_version: "11",
    host_header: "example",
    user_agent: "ua",
    ja4h: "ge11nn_x",
    ...extra,
  };
}

/** Checks that the emitted-row counters partition rows_emitted and that requests = emitted + held. */
function assertBalanced(c: Correlator): void {
  const s = c.stats();
  assertEquals(
    s.rows_immediate + s.rows_released_facts + s.rows_released_timeout + s.rows_released_evicted +
      s.rows_released_overflow,
    s.rows_emitted,
    "release reasons sum to emitted",
  );
  assertEquals(s.requests, s.rows_emitted + s.held, "requests = emitted + held");
}

Deno.test("correlator joins per connection", async (t) => {
  await t.step("facts first: the row ships at once with JA4T, JA4 and the tuple", () => {
    const c = new Correlator({ host: "web1" });
    c.onSyn(tup(1), "64240_2-4-8-1-3_1460_7", T0);
    c.onClientHello(tup(1), hello(1), T0 + 1);
    c.onRequest(tup(1), 100, 7, req("/a"), T0 + 2);
    const rows = c.tick(T0 + 2);
    assertEquals(rows.length, 1);
    const r = rows[0];
    assertEquals(
      [
        r.ts,
        r.host,
        r.src,
        r.src_port,
        r.dst,
        r.dst_port,
        r.pid,
        r.path,
        r.ja4t,
        r.ja4,
        r.ja4_r,
        r.tls_server_name,
      ],
      [
        new Date(T0 + 2).toISOString(),
        "web1",
        "10.0.0.1",
        1025,
        "10.0.0.1",
        443,
        100,
        "/a",
        "64240_2-4-8-1-3_1460_7",
        "t13d_ja4_1",
        "raw_1",
        "h1.example",
      ],
    );
    assertEquals(c.stats().rows_immediate, 1);
    assertBalanced(c);
  });

  await t.step("hasHello: true once the connection's ClientHello is in, false after it is forgotten", () => {
    const c = new Correlator({ host: "web1", orderedEvents: true });
    const k = connKeyOf(tup(2));
    assertEquals(c.hasHello(k), false);
    c.onSyn(tup(2), "64240_2-4-8-1-3_1460_7", T0);
    c.onRequest(tup(2), 100, 7, req("/a"), T0, false);
    assertEquals(c.hasHello(k), false, "a connection without a hello");
    c.onClientHello(tup(2), hello(2), T0 + 1);
    assertEquals(c.hasHello(k), true);
    assertEquals(c.hasHello(connKeyOf(tup(3))), false, "another connection");
    c.onClose(tup(2), 100, 7, T0 + 2);
    assertEquals(c.hasHello(k), false);
  });
  await t.step("takeReady: completed rows without advancing time; held rows stay held", () => {
    const c = new Correlator({ holdMs: 2000 });
    c.onSyn(tup(3), "64240_2-4-8-1-3_1460_7", T0);
    c.onRequest(tup(3), 1, 3, req("/now"), T0 + 1, false);
    c.onRequest(tup(4), 1, 4, req("/held"), T0 + 1); // no SYN, no ClientHello: held
    assertEquals(c.takeReady().map((r) => r.path), ["/now"]);
    assertEquals(c.takeReady(), [], "taken once");
    assertEquals(c.stats().held, 1);
    assertEquals(c.tick(T0 + 2001).map((r) => r.path), ["/held"], "the hold still ends on tick");
    assertBalanced(c);
  });

  await t.step(
    "request before its ClientHello (per-CPU buffers): held, then released when it arrives",
    () => {
      const c = new Correlator({ holdMs: 2000 });
      c.onSyn(tup(2), "syn2", T0); // with the first read
      c.onRequest(tup(2), 1, 3, req("/early"), T0);
      assertEquals(c.tick(T0 + 100).length, 0, "held while JA4 is missing");
      c.onClientHello(tup(2), hello(2), T0 + 170);
      const rows = c.tick(T0 + 171);
      assertEquals(rows.map((r) => [r.path, r.ja4t, r.ja4]), [["/early", "syn2", "t13d_ja4_2"]]);
      assertEquals(c.stats().rows_released_facts, 1);
      assertEquals(c.stats().rows_released_timeout, 0);
      assertBalanced(c);
    },
  );

  await t.step("facts never come: released after the hold, counted; later requests do not wait", () => {
    const c = new Correlator({ holdMs: 1500 });
    c.onRequest(tup(3), 1, 3, req("/1"), T0);
    assertEquals(c.tick(T0 + 1499).length, 0);
    const rows = c.tick(T0 + 1500);
    assertEquals(rows.map((r) => [r.path, r.ja4t, r.ja4]), [["/1", "", ""]]);
    c.onRequest(tup(3), 1, 3, req("/2"), T0 + 1600);
    assertEquals(c.tick(T0 + 1600).map((r) => r.path), ["/2"], "no second wait on the same connection");
    const s = c.stats();
    assertEquals([s.rows_released_timeout, s.rows_immediate, s.rows_missing_ja4t, s.rows_missing_ja4], [
      1,
      1,
      2,
      2,
    ]);
    assertBalanced(c);
  });

  await t.step("keep-alive and pipelining: every request carries the facts, in order", () => {
    const c = new Correlator();
    c.onSyn(tup(4), "syn4", T0);
    c.onRequest(tup(4), 9, 5, req("/p1"), T0);
    c.onRequest(tup(4), 9, 5, req("/p2"), T0 + 1);
    c.onRequest(tup(4), 9, 5, req("/p3"), T0 + 3);
    c.onClientHello(tup(4), hello(4), T0 + 4);
    c.onRequest(tup(4), 9, 5, req("/p4"), T0 + 5);
    const rows = c.tick(T0 + 6);
    assertEquals(rows.map((r) => r.path), ["/p1", "/p2", "/p3", "/p4"]);
    assert(rows.every((r) => r.ja4t === "syn4" && r.ja4 === "t13d_ja4_4"));
    assertEquals(c.stats().rows_released_facts, 3);
    assertBalanced(c);
  });

  await t.step("plain HTTP does not wait for a ClientHello", () => {
    const c = new Correlator();
    c.onSyn(tup(5, 80), "syn5", T0);
    c.onRequest(tup(5, 80), 1, 4, req("/plain"), T0 + 1, false);
    assertEquals(c.tick(T0 + 1).map((r) => [r.path, r.ja4t, r.ja4]), [["/plain", "syn5", ""]]);
    assertEquals(c.stats().rows_missing_ja4, 0, "JA4 was not expected");
    // Upstream can also say so from the packet side.
    c.onSyn(tup(6, 80), "syn6", T0);
    c.onRequest(tup(6, 80), 1, 5, req("/unknown"), T0 + 1);
    assertEquals(c.tick(T0 + 2).length, 0);
    c.onPlaintext(tup(6, 80), T0 + 3);
    assertEquals(c.tick(T0 + 3).map((r) => r.path), ["/unknown"]);
  });

  await t.step(
    "(pid, fd) keying: requests without a tuple find the connection; fd reuse starts afresh",
    () => {
      const c = new Correlator();
      c.onSyn(tup(7), "syn7", T0);
      c.onClientHello(tup(7), hello(7), T0);
      c.bind(tup(7), 50, 12, T0);
      c.onRequest(null, 50, 12, req("/by-fd"), T0 + 1);
      assertEquals(c.tick(T0 + 1).map((r) => [r.path, r.src_port, r.ja4]), [[
        "/by-fd",
        tup(7).src_port,
        "t13d_ja4_7",
      ]]);
      c.onClose(null, 50, 12, T0 + 2);
      // The fd number is reused for another connection that we have not bound yet (a read without a
      // tuple carries no SYN either).
      c.onRequest(null, 50, 12, req("/reused"), T0 + 3);
      c.bind(tup(8), 50, 12, T0 + 4);
      c.onClientHello(tup(8), hello(8), T0 + 6);
      const rows = c.tick(T0 + 7);
      assertEquals(rows.map((r) => [r.path, r.src_port, r.ja4t, r.ja4]), [
        ["/reused", tup(8).src_port, "", "t13d_ja4_8"],
      ]);
      assertBalanced(c);
    },
  );

  await t.step("a new SYN on a used tuple replaces the old facts", () => {
    const c = new Correlator();
    c.onSyn(tup(9), "old", T0);
    c.onClientHello(tup(9), hello(1), T0);
    c.onRequest(tup(9), 1, 1, req("/old"), T0);
    c.onClose(tup(9), 1, 1, T0 + 1);
    c.onSyn(tup(9), "new", T0 + 2);
    c.onRequest(tup(9), 1, 1, req("/new"), T0 + 3, false);
    assertEquals(c.tick(T0 + 3).map((r) => [r.path, r.ja4t, r.ja4]), [["/old", "old", "t13d_ja4_1"], [
      "/new",
      "new",
      "",
    ]]);
    assertEquals(c.stats().tuple_reused, 1);
  });

  await t.step("IPv4-mapped addresses are the same client", () => {
    const c = new Correlator();
    c.onSyn({ ...tup(10), src: "::ffff:10.0.0.10" }, "syn10", T0);
    c.onRequest(tup(10), 1, 1, req("/m"), T0, false);
    assertEquals(c.tick(T0).map((r) => [r.src, r.ja4t]), [["10.0.0.10", "syn10"]]);
    assertEquals(connKeyOf({ ...tup(10), src: "::ffff:10.0.0.10" }), connKeyOf(tup(10)));
  });

  await t.step("LRU eviction releases held rows instead of losing them", () => {
    const c = new Correlator({ maxConnections: 2 });
    c.onRequest(tup(11), 1, 1, req("/a"), T0);
    c.onRequest(tup(12), 1, 2, req("/b"), T0);
    c.onRequest(tup(13), 1, 3, req("/c"), T0);
    const s = c.stats();
    assertEquals([s.connections, s.evicted_lru, s.rows_released_evicted], [2, 1, 1]);
    assertEquals(c.tick(T0).map((r) => r.path), ["/a"]);
    assertBalanced(c);
  });

  await t.step("held-row cap releases the oldest early", () => {
    const c = new Correlator({ maxHeldRows: 3 });
    for (let i = 0; i < 5; i++) c.onRequest(tup(20 + i), 1, i, req(`/${i}`), T0);
    assertEquals(c.stats().held, 3);
    assertEquals(c.stats().rows_released_overflow, 2);
    assertEquals(c.tick(T0).map((r) => r.path), ["/0", "/1"]);
    assertEquals(c.flush().map((r) => r.path), ["/2", "/3", "/4"]);
    assertBalanced(c);
  });

  await t.step("bad input is counted, never thrown", () => {
    const c = new Correlator();
    c.onSyn({ src: "", src_port: 1, dst: "x", dst_port: 2 }, "s", T0);
    c.onClientHello({ src: "a", src_port: 70000, dst: "x", dst_port: 2 }, hello(1), T0);
    c.onSyn({ src: "a", src_port: NaN, dst: "x", dst_port: 2 }, "s", T0);
    c.onRequest({ src: "a", src_port: -1, dst: "x", dst_port: 2 }, NaN, NaN, req("/bad"), T0);
    c.onClose(null, NaN, NaN, T0);
    const s = c.stats();
    assertEquals(s.invalid_input, 4);
    assertEquals(c.tick(T0).map((r) => [r.path, r.src]), [["/bad", ""]], "the request still becomes a row");
    assertBalanced(c);
  });
});

Deno.test("correlator: 120k connections of churn in one fake minute stay bounded and add up", () => {
  const cap = 8192;
  const c = new Correlator({ maxConnections: cap, holdMs: 2000, idleTtlMs: 30_000, closeLingerMs: 3000 });
  const N = 120_000;
  const perMs = 2; // 120k connections over 60 s of fake time
  let requests = 0;
  const rows: Row[] = [];
  let maxState = 0;
  let maxQueues = 0;
  let rnd = 12345;
  const rand = () => ((rnd = (rnd * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const late: { at: number; fn: () => void }[] = [];
  for (let i = 0; i < N; i++) {
    const now = T0 + Math.floor(i / perMs);
    const tu = tup(i);
    const fd = 3 + (i % 500);
    const pid = 1000 + (i % 4);
    const nreq = 1 + (i % 3);
    const packetsLate = rand() < 0.1; // requests overtake the ClientHello (per-CPU buffers)
    const synMissed = rand() < 0.02; // connection predates the agent
    const neverClosed = rand() < 0.05; // close event lost: TTL must clean it up
    const packets = () => c.onClientHello(tu, hello(i), now);
    if (!packetsLate) packets();
    if (!synMissed) c.onSyn(tu, `syn${i}`, now); // with the first read
    for (let k = 0; k < nreq; k++) {
      c.onRequest(tu, pid, fd, req(`/c${i}/r${k}`), now);
      requests++;
    }
    if (packetsLate) late.push({ at: now + 5, fn: packets });
    if (!neverClosed) c.onClose(tu, pid, fd, now + 1);
    while (late.length && late[0].at <= now) late.shift()!.fn();
    if (i % 64 === 0) {
      for (const r of c.tick(now)) rows.push(r);
      maxState = Math.max(maxState, c.stats().connections);
      const q = c.queueLengths();
      maxQueues = Math.max(maxQueues, q.held + q.closing);
    }
  }
  for (const l of late) l.fn();
  const end = T0 + N / perMs + 60_000;
  rows.push(...c.tick(end));
  rows.push(...c.flush());
  const s = c.stats();
  assertEquals(rows.length, requests, "every request became exactly one row");
  assertEquals(s.rows_emitted, requests);
  assertBalanced(c);
  assert(maxState <= cap, `connections ${maxState} ≤ cap ${cap}`);
  assertEquals(c.stats().connections, 0, "all connections forgotten after TTL");
  assertEquals(c.stats().bindings, 0);
  assert(maxQueues < 20_000, `internal queues bounded (${maxQueues})`);
  assertEquals(s.syns + (N - s.syns), N);
  assertGreater(s.rows_released_facts, 0);
  assertGreater(s.evicted_closed, 100_000);
  assertGreater(s.evicted_ttl + s.evicted_lru, 0);
  // Every fact that ended up on a row belongs to that row's connection.
  let withJa4 = 0;
  for (const r of rows) {
    const i = Number(r.path.slice(2, r.path.indexOf("/", 1)));
    if (r.ja4 !== "") {
      withJa4++;
      assertEquals(r.ja4, `t13d_ja4_${i}`);
    }
    if (r.ja4t !== "") assertEquals(r.ja4t, `syn${i}`);
  }
  assertGreater(withJa4 / rows.length, 0.97);
  assertEquals(s.rows_missing_ja4, rows.length - withJa4);
});

Deno.test("correlator: with ordered events a closed connection is forgotten at once, unless rows wait", () => {
  const c = new Correlator({ host: "h", holdMs: 2000, orderedEvents: true });
  c.onSyn(tup(1), "ja4t_1", T0);
  c.onRequest(tup(1), 1, 5, req("/plain"), T0 + 1, false);
  assertEquals(c.tick(T0 + 2).map((r) => [r.path, r.ja4t]), [["/plain", "ja4t_1"]]);
  c.onClose(tup(1), 1, 5, T0 + 3);
  assertEquals(c.stats().connections, 0, "nothing waits: forgotten at the close");
  assertEquals(c.queueLengths().closing, 0);
  // A request without its tuple waits for the bind that gives one, and keeps its connection until then.
  c.onRequest(null, 1, 6, req("/untupled"), T0 + 5);
  c.onClose(null, 1, 6, T0 + 6);
  assertEquals(c.stats().connections, 1, "a held row keeps the connection");
  assertEquals(c.tick(T0 + 7), []);
  assertEquals(c.tick(T0 + 5 + 2000).map((r) => r.path), ["/untupled"], "released when the hold ends");
  assertBalanced(c);
});

Deno.test("correlator: with ordered events a request never waits for a fact that did not come first", async (t) => {
  // tc reports a ClientHello before the server can read it, and a SYN comes with the connection's first read:
  // in one ring a fact missing at the request was lost, and waiting for it only holds the row (and its memory).
  const cases: {
    name: string;
    ordered: boolean;
    syn: boolean;
    hello: boolean;
    tls: boolean;
    held: boolean;
  }[] = [
    { name: "ordered, SYN lost", ordered: true, syn: false, hello: false, tls: false, held: false },
    { name: "ordered, ClientHello lost", ordered: true, syn: true, hello: false, tls: true, held: false },
    { name: "ordered, both lost", ordered: true, syn: false, hello: false, tls: true, held: false },
    { name: "ordered, all there", ordered: true, syn: true, hello: true, tls: true, held: false },
    {
      // The SYN comes with the connection's first read or never: nothing to wait for.
      name: "per-CPU buffers, SYN lost",
      ordered: false,
      syn: false,
      hello: false,
      tls: false,
      held: false,
    },
    {
      name: "per-CPU buffers, hello not yet seen",
      ordered: false,
      syn: true,
      hello: false,
      tls: true,
      held: true,
    },
  ];
  for (const k of cases) {
    await t.step(k.name, () => {
      const c = new Correlator({ host: "h", holdMs: 2000, orderedEvents: k.ordered });
      if (k.syn) c.onSyn(tup(1), "ja4t_1", T0);
      if (k.hello) c.onClientHello(tup(1), hello(1), T0);
      c.onRequest(tup(1), 1, 5, req("/r"), T0 + 1, k.tls);
      const now = c.tick(T0 + 2);
      assertEquals(now.length, k.held ? 0 : 1, k.held ? "held for the hold" : "out at once");
      assertEquals(c.stats().held, k.held ? 1 : 0);
      const rows = k.held ? c.tick(T0 + 1 + 2000) : now;
      assertEquals(rows.map((r) => [r.ja4t, r.ja4]), [[k.syn ? "ja4t_1" : "", k.hello ? "t13d_ja4_1" : ""]]);
      const s = c.stats();
      assertEquals(s.rows_missing_ja4t, k.syn ? 0 : 1, "a row without its JA4T is counted");
      assertEquals(s.rows_missing_ja4, k.tls && !k.hello ? 1 : 0, "a TLS row without its JA4 is counted");
      assertEquals(s.rows_released_timeout, k.held ? 1 : 0);
      assertBalanced(c);
    });
  }
});

Deno.test("correlator: per-CPU buffers, a fact and a close are late by one reader round at most", async (t) => {
  // A fact is written before its connection's requests, each on its CPU's buffer: a poll that found the
  // request finds the fact in the same poll or the next. Rows (and closed connections) wait for that round.
  await t.step("a ClientHello one round late still reaches the row", () => {
    const c = new Correlator({ host: "h", holdMs: 2000, orderedEvents: false });
    c.onSyn(tup(1), "ja4t_1", T0);
    c.onRequest(tup(1), 1, 5, req("/late"), T0);
    c.endOfRound(); // the request's own round
    assertEquals(c.stats().held, 1);
    c.onClientHello(tup(1), hello(1), T0 + 1); // read in the next poll
    assertEquals(c.tick(T0 + 2).map((r) => [r.path, r.ja4t, r.ja4]), [["/late", "ja4t_1", "t13d_ja4_1"]]);
    assertBalanced(c);
  });
  await t.step("a lost ClientHello: the row goes after the next round, long before the hold ends", () => {
    const c = new Correlator({ host: "h", holdMs: 2000, orderedEvents: false });
    c.onRequest(tup(1), 1, 5, req("/lost"), T0);
    c.endOfRound();
    assertEquals(c.takeReady(), [], "held through its own round");
    c.onRequest(tup(2), 1, 6, req("/next"), T0 + 1); // arrives in the next round
    c.endOfRound();
    assertEquals(
      c.takeReady().map((r) => [r.path, r.ja4]),
      [["/lost", ""]],
      "out a round later, without JA4",
    );
    assertEquals(c.stats().held, 1, "the next round's row still waits");
    assertEquals(c.stats().rows_released_timeout, 1);
    assertEquals(c.stats().rows_missing_ja4t, 1);
    c.endOfRound();
    assertEquals(c.takeReady().map((r) => r.path), ["/next"]);
    assertBalanced(c);
  });
  await t.step("a closed connection is forgotten a round after its close, not after the linger", () => {
    const c = new Correlator({ host: "h", holdMs: 2000, closeLingerMs: 5000, orderedEvents: false });
    c.onSyn(tup(1), "ja4t_1", T0);
    c.onRequest(tup(1), 1, 5, req("/a"), T0 + 1, false);
    c.onClose(tup(1), 1, 5, T0 + 2);
    c.endOfRound();
    assertEquals(c.stats().connections, 1, "a request of it may still be in another CPU's buffer");
    c.onRequest(tup(1), 1, 5, req("/b"), T0 + 3, false); // read after the close, written before it
    c.endOfRound();
    assertEquals(c.stats().connections, 0, "forgotten a round after the close");
    assertEquals(c.queueLengths().closing, 0);
    assertEquals(c.takeReady().map((r) => [r.path, r.ja4t]), [["/a", "ja4t_1"], ["/b", "ja4t_1"]]);
    assertBalanced(c);
  });
});

Deno.test("correlator: a SYN alone makes no connection state; the first request takes its JA4T", async (t) => {
  await t.step("SYN then request: one connection, with the JA4T", () => {
    const c = new Correlator({ host: "h", orderedEvents: true });
    c.onSyn(tup(1), "ja4t_1", T0);
    assertEquals([c.stats().connections, c.stats().syns_pending], [0, 1], "a slot, no connection");
    c.onRequest(tup(1), 1, 5, req("/a"), T0 + 1, false);
    assertEquals([c.stats().connections, c.stats().syns_pending], [1, 0]);
    assertEquals(c.takeReady().map((r) => r.ja4t), ["ja4t_1"]);
    assertBalanced(c);
  });
  await t.step("SYN then ClientHello then request (TLS): both facts on the row", () => {
    const c = new Correlator({ host: "h", orderedEvents: true });
    c.onSyn(tup(2), "ja4t_2", T0);
    c.onClientHello(tup(2), hello(2), T0 + 1);
    c.onRequest(tup(2), 1, 6, req("/tls"), T0 + 2, true);
    assertEquals(c.takeReady().map((r) => [r.ja4t, r.ja4]), [["ja4t_2", "t13d_ja4_2"]]);
  });
  await t.step("scanners: SYNs that nothing follows stay slots, dropped oldest first, counted", () => {
    const c = new Correlator({ host: "h", orderedEvents: true, maxConnections: 1000 });
    for (let i = 0; i < 5000; i++) c.onSyn(tup(100 + i), `scan_${i}`, T0 + i);
    const s = c.stats();
    // 1000 in the ring, the newest in hand (a first read's SYN, taken by its request without the ring).
    assertEquals([s.connections, s.syns_pending, s.syns_unanswered, s.syns], [0, 1001, 3999, 5000]);
    // The newest SYNs still reach their requests; a dropped one's request ships without JA4T.
    c.onRequest(tup(100 + 4999), 1, 7, req("/late"), T0 + 5000, false);
    c.onRequest(tup(100), 1, 8, req("/oldest"), T0 + 5001, false);
    assertEquals(c.takeReady().map((r) => [r.path, r.ja4t]), [["/late", "scan_4999"], ["/oldest", ""]]);
  });
  await t.step(
    "the SYN in hand: its request takes it; one not taken moves to the ring; a close drops it",
    () => {
      const c = new Correlator({ host: "h", orderedEvents: true });
      c.onSyn(tup(1), "ja4t_1", T0);
      c.onSyn(tup(2), "ja4t_2", T0); // tup(1)'s first read brought no request: its SYN waits in the ring
      assertEquals(c.stats().syns_pending, 2);
      c.onRequest(tup(2), 1, 5, req("/2"), T0 + 1, false);
      c.onRequest(tup(1), 1, 6, req("/1"), T0 + 1, false);
      assertEquals(c.takeReady().map((r) => [r.path, r.ja4t]), [["/2", "ja4t_2"], ["/1", "ja4t_1"]]);
      assertEquals(c.stats().syns_pending, 0);
      c.onSyn(tup(3), "ja4t_3", T0 + 2);
      c.onClose(tup(3), 1, 7, T0 + 3);
      assertEquals(c.stats().syns_pending, 0, "closed before its request");
      c.onSyn(tup(4), "ja4t_4", T0 + 4);
      c.tick(T0 + 5); // the tick parks it in the ring, where it ages like any other
      assertEquals(c.stats().syns_pending, 1);
      c.onRequest(tup(4), 1, 8, req("/4"), T0 + 6, false);
      assertEquals(c.takeReady().map((r) => r.ja4t), ["ja4t_4"]);
      assertBalanced(c);
    },
  );
  await t.step("unanswered SYNs go after the idle time", () => {
    const c = new Correlator({ host: "h", orderedEvents: true, idleTtlMs: 60_000 });
    c.onSyn(tup(1), "ja4t_1", T0);
    c.onSyn(tup(2), "ja4t_2", T0 + 30_000);
    c.tick(T0 + 60_000);
    assertEquals([c.stats().syns_pending, c.stats().syns_unanswered], [1, 1]);
    c.tick(T0 + 90_000);
    assertEquals([c.stats().syns_pending, c.stats().syns_unanswered], [0, 2]);
  });
  await t.step("a SYN after its connection's ClientHello joins it (it comes with the first read)", () => {
    const c = new Correlator({ host: "h", holdMs: 2000, orderedEvents: true });
    c.onClientHello(tup(3), hello(3), T0);
    c.onSyn(tup(3), "ja4t_3", T0 + 1);
    c.onRequest(tup(3), 1, 9, req("/r"), T0 + 1);
    assertEquals(c.takeReady().map((r) => [r.ja4t, r.ja4]), [["ja4t_3", "t13d_ja4_3"]]);
    assertEquals([c.stats().syns_pending, c.stats().tuple_reused], [0, 0], "the connection existed: no slot");
    // The next first read on that tuple is another connection (the port reused, its close not seen).
    c.onSyn(tup(3), "ja4t_3b", T0 + 2);
    c.onRequest(tup(3), 1, 9, req("/r2"), T0 + 2, false);
    assertEquals(c.takeReady().map((r) => [r.ja4t, r.ja4]), [["ja4t_3b", ""]]);
    assertEquals(c.stats().tuple_reused, 1);
  });
});

Deno.test("correlator: a (pid, fd) that carries a new connection closes the old one (its close record lost)", async (t) => {
  for (const ordered of [true, false]) {
    await t.step(
      ordered ? "ordered events: forgotten at once" : "per-CPU buffers: forgotten a round later",
      () => {
        const c = new Correlator({ host: "h", orderedEvents: ordered });
        c.onSyn(tup(1), "ja4t_1", T0);
        c.onRequest(tup(1), 1, 5, req("/old"), T0 + 1, false);
        // No close of fd 5 arrives (the ring was full); the next connection the process reads on fd 5:
        c.onSyn(tup(2), "ja4t_2", T0 + 2);
        c.onRequest(tup(2), 1, 5, req("/new"), T0 + 3, false);
        assertEquals(c.stats().evicted_fd_reused, 1);
        if (!ordered) {
          assertEquals(c.stats().connections, 2, "a late event of the old one may still come this round");
          c.endOfRound();
          c.endOfRound();
        }
        assertEquals(
          [c.stats().connections, c.stats().bindings],
          [1, 1],
          "only the new connection is tracked",
        );
        assertEquals(c.stats().evicted_closed, 0, "not counted as a close record");
        const rows = [...c.takeReady(), ...c.tick(T0 + 4)];
        assertEquals(rows.map((r) => [r.path, r.ja4t]), [["/old", "ja4t_1"], ["/new", "ja4t_2"]]);
        assertBalanced(c);
      },
    );
  }
});

Deno.test("correlator: a plain-HTTP connection's state rides on its request stream", async (t) => {
  const stream = (n: number): ConnTuple => ({
    ...tup(n, 80),
    connKey: connKeyOf(tup(n, 80)),
    facts: undefined,
  });
  const rowsOf = (rs: Row[]) =>
    rs.map((r) => [r.ts, r.src, r.src_port, r.dst_port, r.pid, r.path, r.ja4t, r.ja4]);

  await t.step("the same rows as through the maps, and nothing in them", () => {
    const lean = new Correlator({ host: "h", orderedEvents: true });
    const maps = new Correlator({ host: "h", orderedEvents: true });
    const st = stream(1);
    for (const c of [lean, maps]) c.onSyn(tup(1, 80), "syn1", T0);
    for (let i = 0; i < 3; i++) {
      lean.onStreamRequest(st, 100, 7, req(`/${i}`), T0 + i, false);
      maps.onRequest(tup(1, 80), 100, 7, req(`/${i}`), T0 + i, false);
    }
    assertEquals(rowsOf(lean.takeReady()), rowsOf(maps.takeReady()));
    assertEquals([lean.stats().connections, lean.stats().bindings], [1, 0], "counted, and in no map");
    assertEquals([maps.stats().connections, maps.stats().bindings], [1, 1]);
    assertEquals([lean.stats().on_streams, lean.stats().rows_immediate], [1, 3]);
    assert(st.facts !== undefined, "kept in the slot");
    lean.onClose(tup(1, 80), 100, 7, T0 + 9, st.facts);
    assertEquals([lean.stats().closes, lean.stats().evicted_closed, lean.stats().connections], [1, 1, 0]);
    assertBalanced(lean);
  });

  await t.step("a stream that goes without its close takes the connection with it", () => {
    const c = new Correlator({ host: "h", orderedEvents: true });
    const st = stream(5);
    c.onStreamRequest(st, 100, 7, req("/a"), T0, false);
    assertEquals(c.stats().connections, 1);
    c.streamGone(st.facts);
    assertEquals(c.stats().connections, 0);
    c.onClose(tup(5, 80), 100, 7, T0 + 1); // its close, late: nothing left to find
    assertEquals(c.stats().connections, 0);
  });

  for (
    const [name, ordered, tls, before] of [
      ["TLS plaintext (its row may wait for a ClientHello)", true, true, undefined],
      ["per-CPU buffers (a fact may still come)", false, false, undefined],
      ["its tuple has state already (a ClientHello came first)", true, false, "hello"],
      ["its (pid, fd) is bound to another connection", true, false, "bound"],
    ] as const
  ) {
    await t.step(`through the maps: ${name}`, () => {
      const c = new Correlator({ host: "h", orderedEvents: ordered });
      const st = stream(2);
      if (before === "hello") c.onClientHello(tup(2, 80), hello(2), T0);
      if (before === "bound") c.onRequest(tup(3, 80), 100, 7, req("/other"), T0, false);
      c.onStreamRequest(st, 100, 7, req("/a"), T0 + 1, tls);
      assertEquals(st.facts, undefined);
      assertEquals(c.stats().on_streams, 0);
      // "bound": the other connection was closed (its fd carries this one now), and forgotten.
      assertEquals(c.stats().connections, 1);
      c.tick(T0 + 5000);
      assertBalanced(c);
    });
  }
});
