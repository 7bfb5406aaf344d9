import { assert, assertEquals } from "../testing/asserts.ts";
import {
  type ClosedConnection,
  type ReassemblyLimits,
  TcpConnection,
  TcpConnectionTable,
  TcpDirection,
} from "./tcp_reassembly.ts";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type TcpSegment } from "../parse/packet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function collect(limits?: ReassemblyLimits) {
  const d = new TcpDirection(limits);
  const out: string[] = [];
  const gaps: number[] = [];
  d.onData = (bytes) => out.push(dec.decode(bytes));
  d.onGap = (n) => gaps.push(n);
  return { d, text: () => out.join(""), out, gaps };
}

const P = TCP_PSH | TCP_ACK;

function live(c: TcpConnection | ClosedConnection): TcpConnection {
  assert(c instanceof TcpConnection, "expected an open connection");
  return c;
}

Deno.test("TcpDirection: in-order delivery, out-of-order, retransmission, overlap", async (t) => {
  await t.step("after a SYN, in order", () => {
    const c = collect();
    c.d.push(100, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(101, P, enc.encode("hello "), 1);
    c.d.push(107, P, enc.encode("world"), 2);
    assertEquals(c.text(), "hello world");
    assertEquals(c.d.isn, 100);
  });
  await t.step("out of order is held until the hole fills", () => {
    const c = collect();
    c.d.push(100, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(107, P, enc.encode("world"), 1);
    assertEquals(c.text(), "");
    c.d.push(101, P, enc.encode("hello "), 2);
    assertEquals(c.text(), "hello world");
    assertEquals(c.d.stats.outOfOrder, 1);
  });
  await t.step("retransmission is dropped, overlap trimmed (first copy wins)", () => {
    const c = collect();
    c.d.push(0, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(1, P, enc.encode("abcd"), 1);
    c.d.push(1, P, enc.encode("abcd"), 2);
    c.d.push(3, P, enc.encode("XXef"), 3);
    assertEquals(c.text(), "abcdef");
    assertEquals([c.d.stats.retransmitted, c.d.stats.overlaps], [1, 1]);
  });
  await t.step("held segments that overlap each other", () => {
    const c = collect();
    c.d.push(0, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(5, P, enc.encode("efgh"), 1);
    c.d.push(3, P, enc.encode("cdef"), 2);
    c.d.push(5, P, enc.encode("efgh"), 3);
    c.d.push(1, P, enc.encode("ab"), 4);
    assertEquals(c.text(), "abcdefgh");
  });
  await t.step("a capture that starts mid-stream (no SYN)", () => {
    const c = collect();
    c.d.push(5000, P, enc.encode("GET / "), 0);
    c.d.push(5006, P, enc.encode("HTTP/1.1"), 1);
    assertEquals(c.text(), "GET / HTTP/1.1");
  });
  await t.step("sequence numbers wrap around 2^32", () => {
    const c = collect();
    c.d.push(0xfffffffd, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(0x00000000, P, enc.encode("cd"), 1); // ahead of the hole, across the wrap
    c.d.push(0xfffffffe, P, enc.encode("ab"), 2);
    c.d.push(0xffffffff, P, enc.encode("bc"), 3); // retransmission across the wrap
    assertEquals(c.text(), "abcd");
    assertEquals(c.d.stats.retransmitted, 1);
  });
  await t.step("data on a SYN (TCP Fast Open) starts after it", () => {
    const c = collect();
    c.d.push(10, TCP_SYN, enc.encode("tfo"), 0);
    c.d.push(14, P, enc.encode("!"), 1);
    assertEquals(c.text(), "tfo!");
  });
});

Deno.test("TcpDirection: caps", async (t) => {
  await t.step("maxStreamBytes stops delivery", () => {
    const c = collect({ maxStreamBytes: 5, maxPendingBytes: 100, maxPendingSegments: 10 });
    c.d.push(0, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(1, P, enc.encode("abc"), 1);
    c.d.push(4, P, enc.encode("defg"), 2);
    c.d.push(8, P, enc.encode("hij"), 3);
    assertEquals(c.text(), "abcde");
    assert(c.d.closed);
    assertEquals(c.d.stats.overCap, 1);
  });
  await t.step("a hole that never fills becomes a gap once the pending cap is hit", () => {
    const c = collect({ maxStreamBytes: 1 << 20, maxPendingBytes: 8, maxPendingSegments: 10 });
    c.d.push(0, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(1, P, enc.encode("ab"), 1);
    c.d.push(10, P, enc.encode("wxyz"), 2); // hole of 7 bytes at 3..9
    c.d.push(14, P, enc.encode("1234"), 3);
    assertEquals(c.text(), "ab");
    c.d.push(18, P, enc.encode("5"), 4); // 9 bytes pending > 8: give up on the hole
    assertEquals(c.text(), "abwxyz12345");
    assertEquals(c.gaps, [7]);
    assertEquals(c.d.stats.gapBytes, 7);
  });
  await t.step("flush delivers what waits behind a hole", () => {
    const c = collect();
    c.d.push(0, TCP_SYN, new Uint8Array(0), 0);
    c.d.push(5, P, enc.encode("later"), 1);
    c.d.flush();
    assertEquals(c.text(), "later");
    assertEquals(c.gaps, [4]);
  });
  await t.step("a detached consumer costs no copies", () => {
    const d = new TcpDirection();
    d.push(0, TCP_SYN, new Uint8Array(0), 0);
    d.push(10, P, enc.encode("x"), 1); // out of order but no consumer: not held
    d.flush();
    assertEquals(d.delivered, 0);
  });
});

function seg(
  src: string,
  sport: number,
  dst: string,
  dport: number,
  flags: number,
  seq: number,
  payload = "",
  extra: Partial<TcpSegment> = {},
): TcpSegment {
  return {
    ipVersion: 4,
    src,
    dst,
    ttl: 64,
    innerTtl: 64,
    srcPort: sport,
    dstPort: dport,
    seq,
    ack: 0,
    flags,
    window: 65535,
    options: new Uint8Array([2, 4, 5, 0xb4]),
    payload: enc.encode(payload),
    ...extra,
  };
}

Deno.test("TcpConnectionTable: stream numbers, roles, SYN facts and JA4L marks", async (t) => {
  await t.step("handshake, data, close", () => {
    const table = new TcpConnectionTable();
    const closed: number[] = [];
    table.onClose = (c) => closed.push(c.stream);
    const C = "10.0.0.1", S = "10.0.0.2";
    const c = live(table.handle(seg(C, 5000, S, 80, TCP_SYN, 100, "", { ttl: 128, window: 64240 }), 1000, 1));
    table.handle(seg(S, 80, C, 5000, TCP_SYN | TCP_ACK, 900, "", { ttl: 57, window: 65535 }), 3000, 2);
    table.handle(seg(C, 5000, S, 80, TCP_ACK, 101), 3100, 3);
    table.handle(seg(C, 5000, S, 80, P, 101, "GET /"), 3200, 4);
    table.handle(seg(S, 80, C, 5000, P, 901, "HTTP/1.1 200"), 5000, 5);
    table.handle(seg(C, 5000, S, 80, P, 106, "more"), 5300, 6);
    const again = live(table.handle(seg(S, 80, C, 5000, TCP_FIN | TCP_ACK, 913), 6000, 7));
    assertEquals(again, c);
    assertEquals(c.stream, 0);
    assertEquals(c.client, { addr: C, port: 5000 });
    assertEquals(c.server, { addr: S, port: 80 });
    assertEquals(c.roleFrom, "syn");
    assertEquals([c.syn?.window, c.syn?.ttl, Array.from(c.syn!.options)], [64240, 128, [2, 4, 5, 0xb4]]);
    assertEquals([c.synAck?.window, c.synAck?.ttl], [65535, 57]);
    assertEquals(c.times, {
      a: 1000,
      b: 3000,
      c: 3100,
      d: 3200,
      e: 5000,
      f: 5300,
      clientTtl: 128,
      serverTtl: 57,
    });
    table.finish();
    assertEquals(closed, [0]);
  });
  await t.step("roles from a SYN-ACK when the SYN was not captured", () => {
    const table = new TcpConnectionTable();
    const c = live(table.handle(seg("10.0.0.2", 443, "10.0.0.1", 6000, TCP_SYN | TCP_ACK, 5), 0, 1));
    assertEquals([c.client.port, c.server.port, c.roleFrom], [6000, 443, "syn-ack"]);
    assert(c.syn === undefined);
  });
  await t.step("mid-stream: first-packet guess, then fixed by the consumer", () => {
    const table = new TcpConnectionTable();
    const c = live(table.handle(seg("10.0.0.2", 443, "10.0.0.1", 6000, TCP_ACK, 5), 0, 1));
    assertEquals(c.client.port, 443);
    c.setClient(false);
    assertEquals([c.client.port, c.roleFrom], [6000, "payload"]);
  });
  await t.step("new numbers per pair, and on port reuse (SYN with another sequence number)", () => {
    const table = new TcpConnectionTable();
    const a = live(table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 10), 0, 1));
    const b = live(table.handle(seg("1.1.1.1", 1001, "2.2.2.2", 80, TCP_SYN, 10), 0, 2));
    const aRetx = live(table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 10), 0, 3));
    const aBack = live(table.handle(seg("2.2.2.2", 80, "1.1.1.1", 1000, TCP_RST | TCP_ACK, 0), 0, 4));
    const reuse = live(table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 99999), 0, 5));
    assertEquals([a.stream, b.stream, aRetx.stream, aBack.stream, reuse.stream], [0, 1, 0, 0, 2]);
    assertEquals(a.synCount, 2);
    assertEquals(table.reserveStream(), 3);
    assertEquals(table.handle(seg("3.3.3.3", 1, "2.2.2.2", 80, TCP_SYN, 1), 0, 6).stream, 4);
  });
  await t.step("a closed connection keeps its number for stragglers, and is collected", () => {
    const table = new TcpConnectionTable();
    let closed = 0;
    table.onClose = () => closed++;
    table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 10), 0, 1);
    table.handle(seg("2.2.2.2", 80, "1.1.1.1", 1000, TCP_SYN | TCP_ACK, 50), 0, 2);
    table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_FIN | TCP_ACK, 11), 0, 3);
    table.handle(seg("2.2.2.2", 80, "1.1.1.1", 1000, TCP_FIN | TCP_ACK, 51), 0, 4);
    assertEquals(closed, 1);
    const late = table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_ACK, 12), 0, 5);
    assert(!(late instanceof TcpConnection));
    assertEquals([late.stream, closed], [0, 1]);
    const reuse = table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 777), 0, 6);
    assertEquals(reuse.stream, 1);
    table.finish();
    assertEquals(closed, 2);
  });
  await t.step("an ICMP-quoted header finds its connection but is not traffic", () => {
    const table = new TcpConnectionTable();
    const c = live(table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, TCP_SYN, 10), 0, 1));
    const q = live(table.handle(seg("1.1.1.1", 1000, "2.2.2.2", 80, 0, 10, "", { icmpError: true }), 0, 2));
    assertEquals(q, c);
    assertEquals(c.packets, 1);
  });
  await t.step("eviction of closed and idle connections", () => {
    const table = new TcpConnectionTable();
    const out: number[] = [];
    table.onClose = (c) => out.push(c.stream);
    table.handle(seg("1.1.1.1", 1, "2.2.2.2", 80, TCP_RST, 1), 0, 1);
    table.handle(seg("1.1.1.1", 2, "2.2.2.2", 80, TCP_ACK, 1), 0, 2);
    table.handle(seg("1.1.1.1", 3, "2.2.2.2", 80, TCP_ACK, 1), 500e6, 3);
    table.evict(200e6);
    assertEquals(out, [0]);
    table.evict(700e6);
    assertEquals(out, [0, 1]);
    assertEquals(table.size, 1);
  });
});
