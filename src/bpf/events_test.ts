import { assert, assertEquals, assertThrows } from "../testing/asserts.ts";
import { decodeEvent, EventDecodeError, EventView } from "./events.ts";
import { formatIPv6 } from "../parse/addr.ts";
import {
  CLOSE_EVENT,
  DATA_EVENT,
  EVENT_HDR,
  EventFlags,
  EventKind,
  Family,
  type FieldLayout,
  Hook,
  SYN_FACTS,
} from "./layout.gen.ts";

// Records are built from the same generated layout the decoder reads, so a layout change moves both.
function put(dv: DataView, f: FieldLayout, v: number | bigint | Uint8Array): void {
  if (v instanceof Uint8Array) return new Uint8Array(dv.buffer).set(v, f.offset);
  const n = Number(v);
  ({
    u8: () => dv.setUint8(f.offset, n),
    u16: () => dv.setUint16(f.offset, n, true),
    u32: () => dv.setUint32(f.offset, n, true),
    s32: () => dv.setInt32(f.offset, n, true),
    u64: () => dv.setBigUint64(f.offset, BigInt(v), true),
  } as Record<string, () => void>)[f.kind]();
}

function record(
  size: number,
  hdr: Record<string, number | bigint | Uint8Array>,
  body: [FieldLayout, number | Uint8Array][] = [],
) {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  for (const [k, v] of Object.entries(hdr)) put(dv, EVENT_HDR.fields[k as keyof typeof EVENT_HDR.fields], v);
  for (const [f, v] of body) put(dv, f, v);
  return b;
}

const v4 = (a: number[]) => Uint8Array.from([...a, ...new Array(12).fill(0)]);
const HTTP = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n");

Deno.test("events: decode each kind from generated offsets", async (t) => {
  await t.step("data, IPv4, truncated", () => {
    const rec = record(DATA_EVENT.fields.data.offset + HTTP.length, {
      kind: EventKind.DATA,
      hook: Hook.TP_RECVFROM,
      family: Family.INET,
      flags: EventFlags.TRUNCATED | EventFlags.LAST_CHUNK,
      pid: 1234,
      tid: 1235,
      fd: 7,
      ts_ns: 99n,
      comm: new TextEncoder().encode("nginx"),
      saddr: v4([127, 0, 0, 2]),
      daddr: v4([127, 0, 0, 1]),
      sport: 40000,
      dport: 19080,
      data_len: HTTP.length,
      total: 20000,
      offset: 0,
    }, [[DATA_EVENT.fields.pos, 4096]]);
    rec.set(HTTP, DATA_EVENT.fields.data.offset);
    const e = decodeEvent(rec);
    assert(e.type === "data");
    assertEquals(
      [
        e.hook,
        e.pid,
        e.tid,
        e.fd,
        e.comm,
        e.tsNs,
        e.srcAddr,
        e.srcPort,
        e.dstAddr,
        e.dstPort,
        e.total,
        e.pos,
      ],
      ["tracepoint", 1234, 1235, 7, "nginx", 99n, "127.0.0.2", 40000, "127.0.0.1", 19080, 20000, 4096],
    );
    assertEquals([e.truncated, e.lastChunk, e.plaintext], [true, true, false]);
    assertEquals(new TextDecoder().decode(e.bytes), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  });
  // The SYN's fields sit inside the data event: their offsets are the nested struct's plus its own.
  const synAt = (f: FieldLayout): FieldLayout => ({ ...f, offset: DATA_EVENT.fields.syn.offset + f.offset });
  await t.step("data carrying its connection's SYN, IPv6, options", () => {
    const opts = Uint8Array.from([2, 4, 5, 0xb4, 1, 3, 3, 7]);
    const saddr = new Uint8Array(16);
    saddr[15] = 1;
    const rec = record(DATA_EVENT.fields.data.offset + HTTP.length, {
      kind: EventKind.DATA,
      hook: Hook.TP_RECVFROM,
      family: Family.INET6,
      flags: EventFlags.SYN | EventFlags.LAST_CHUNK,
      fd: 5,
      saddr,
      daddr: Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]),
      sport: 5555,
      dport: 443,
      data_len: HTTP.length,
      total: HTTP.length,
    }, [
      [synAt(SYN_FACTS.fields.ts_ns), 77],
      [synAt(SYN_FACTS.fields.seq), 0xdeadbeef],
      [synAt(SYN_FACTS.fields.window), 65535],
      [synAt(SYN_FACTS.fields.ttl), 64],
      [synAt(SYN_FACTS.fields.opt_len), opts.length],
      [synAt(SYN_FACTS.fields.options), opts],
    ]);
    rec.set(HTTP, DATA_EVENT.fields.data.offset);
    const e = decodeEvent(rec);
    assert(e.type === "data" && e.syn);
    assertEquals([e.fd, e.srcAddr, e.dstAddr, e.syn.tsNs, e.syn.seq, e.syn.window, e.syn.ttl], [
      5,
      "::1",
      "2001:db8::1:0:0:1",
      77n,
      0xdeadbeef,
      65535,
      64,
    ]);
    assertEquals(e.syn.options, opts);
    assertEquals(e.bytes, HTTP);
    const view = new EventView();
    assert(view.load(rec));
    assertEquals([view.hasSyn, view.window, view.seq, view.synTsNs], [true, 65535, 0xdeadbeef, 77]);
    assertEquals([view.options, view.data], [opts, HTTP]);
    // Without the flag the same bytes carry no SYN (the kernel zeroes the field then).
    rec[EVENT_HDR.fields.flags.offset] = EventFlags.LAST_CHUNK;
    const plain = decodeEvent(rec);
    assert(plain.type === "data");
    assertEquals(plain.syn, undefined);
    assert(view.load(rec));
    assertEquals(view.hasSyn, false);
  });
  await t.step("close", () => {
    const rec = record(CLOSE_EVENT.size, { kind: EventKind.CLOSE, hook: Hook.TP_CLOSE, fd: 9 }, [
      [CLOSE_EVENT.fields.pos_raw, 517],
      [CLOSE_EVENT.fields.pos_plaintext, 77],
    ]);
    const e = decodeEvent(rec);
    assert(e.type === "close");
    assertEquals([e.fd, e.posRaw, e.posPlaintext, e.family, e.srcAddr], [9, 517, 77, "unknown", ""]);
  });
});

Deno.test("events: malformed records are typed errors and counted", async (t) => {
  const cases: [string, Uint8Array, EventDecodeError["reason"]][] = [
    ["empty", new Uint8Array(0), "short"],
    ["header only, kind 0", new Uint8Array(EVENT_HDR.size), "kind"],
    [
      "data_len past the end",
      record(DATA_EVENT.fields.data.offset + 10, { kind: EventKind.DATA, data_len: 11 }),
      "length",
    ],
    [
      "data cut inside its header",
      record(DATA_EVENT.fields.data.offset - 1, { kind: EventKind.DATA }),
      "short",
    ],
  ];
  const view = new EventView();
  for (const [name, rec, reason] of cases) {
    await t.step(name, () => {
      const e = assertThrows(() => decodeEvent(rec), EventDecodeError) as EventDecodeError;
      assertEquals(e.reason, reason);
      assertEquals(view.load(rec), false);
    });
  }
  assertEquals(view.malformed, { short: 2, kind: 1, length: 1 });
});

Deno.test("events: IPv6 text form (RFC 5952)", () => {
  const h = (s: string) => Uint8Array.from(s.match(/../g)!.map((x) => parseInt(x, 16)));
  const cases: [string, string][] = [
    ["00000000000000000000000000000000", "::"],
    ["20010db8000000000001000000000001", "2001:db8::1:0:0:1"],
    // A dual-stack socket's IPv4 client: the same text as in its IPv4 packets (TC), so both join.
    ["00000000000000000000ffff7f000001", "127.0.0.1"],
    ["fe800000000000000202b3fffe1e8329", "fe80::202:b3ff:fe1e:8329"],
    ["20010db8000100000001000100010001", "2001:db8:1:0:1:1:1:1"],
  ];
  for (const [hex, text] of cases) assertEquals(formatIPv6(h(hex), 0, "v4"), text);
});

Deno.test("events: EventView.loadAt at an offset of a larger area reads what load() reads of the record", async (t) => {
  const data = record(DATA_EVENT.fields.data.offset + HTTP.length, {
    kind: EventKind.DATA,
    hook: Hook.TP_RECVFROM,
    family: Family.INET,
    pid: 77,
    fd: 5,
    ts_ns: 123456789n,
    comm: new TextEncoder().encode("nginx"),
    saddr: v4([10, 1, 2, 3]),
    daddr: v4([10, 0, 0, 1]),
    sport: 50000,
    dport: 80,
    data_len: HTTP.length,
    total: HTTP.length,
  }, [[DATA_EVENT.fields.pos, 300]]);
  data.set(HTTP, DATA_EVENT.fields.data.offset);
  const close = record(CLOSE_EVENT.size, { kind: EventKind.CLOSE, hook: Hook.TP_CLOSE, fd: 5 }, [
    [CLOSE_EVENT.fields.pos_raw, 327],
  ]);
  const cut = record(DATA_EVENT.fields.data.offset + 4, { kind: EventKind.DATA, data_len: 5 });
  const fields = (v: EventView) =>
    JSON.stringify([
      v.kind,
      v.pid,
      v.fd,
      v.tsNs,
      v.src,
      v.src_port,
      v.dst,
      v.dst_port,
      v.pos,
      v.posRaw,
      v.comm,
      [...v.data],
    ]);
  for (
    const [name, rec, ok] of [["data", data, true], ["close", close, true], ["cut", cut, false]] as const
  ) {
    await t.step(name, () => {
      // The record at an odd offset of an area, garbage around it (as in the mapped ring).
      const at = 37;
      const area = new Uint8Array(at + rec.length + 64).fill(0xa5);
      area.set(rec, at);
      const a = new EventView(), b = new EventView();
      assertEquals(a.load(rec), ok);
      assertEquals(b.loadAt(area, new DataView(area.buffer), at, rec.length), ok);
      if (ok) assertEquals(fields(b), fields(a));
      else assertEquals(b.malformed, a.malformed);
    });
  }
});
