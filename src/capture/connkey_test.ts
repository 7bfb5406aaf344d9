import { assert, assertEquals, assertNotEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import { connKeyOf, MAX_ENDPOINTS, parseV4, parseV6, v4Key } from "./connkey.ts";
import { EventView } from "../bpf/events.ts";
import { CLOSE_EVENT, EVENT_HDR, EventKind, Family } from "../bpf/layout.gen.ts";

/** A CLOSE record for the tuple, addresses as AF_INET or as IPv4-mapped AF_INET6 bytes (generated layout). */
function closeRecord(src: string, sport: number, dst: string, dport: number, mapped: boolean): Uint8Array {
  const b = new Uint8Array(CLOSE_EVENT.size);
  const dv = new DataView(b.buffer);
  const f = EVENT_HDR.fields;
  dv.setUint8(f.kind.offset, EventKind.CLOSE);
  dv.setUint8(f.family.offset, mapped ? Family.INET6 : Family.INET);
  const addr = (o: number, a: string) => {
    const q = a.split(".").map(Number);
    if (mapped) b.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...q], o);
    else b.set(q, o);
  };
  addr(f.saddr.offset, src);
  addr(f.daddr.offset, dst);
  dv.setUint16(f.sport.offset, sport, true);
  dv.setUint16(f.dport.offset, dport, true);
  return b;
}

Deno.test("parseV4 takes canonical dotted quads (and IPv4-mapped IPv6) only", async (t) => {
  const cases: [string, number][] = [
    ["0.0.0.0", 0],
    ["127.0.0.1", 0x7f000001],
    ["255.255.255.255", 0xffffffff],
    ["10.1.2.3", 0x0a010203],
    ["::ffff:10.1.2.3", 0x0a010203],
    ["", -1],
    ["1.2.3", -1],
    ["1.2.3.4.5", -1],
    ["1.2.3.256", -1],
    ["01.2.3.4", -1],
    ["1.2.3.4 ", -1],
    ["1..3.4", -1],
    ["1.2.3.1234", -1],
    ["::1", -1],
    ["::ffff:", -1],
    ["fe80::1", -1],
  ];
  for (const [text, want] of cases) {
    await t.step(JSON.stringify(text), () => assertEquals(parseV4(text), want));
  }
});

Deno.test("connKeyOf: IPv4 tuples get numbers, IPv6 short strings; mapped and plain IPv4 agree", () => {
  const t = { src: "10.0.0.7", src_port: 40000, dst: "10.0.0.1", dst_port: 22080 };
  const k = connKeyOf(t);
  assertEquals(typeof k, "number");
  assert(Number.isSafeInteger(k as number));
  assertEquals(connKeyOf({ ...t, src: "::ffff:10.0.0.7", dst: "::ffff:10.0.0.1" }), k);
  assertNotEquals(connKeyOf({ ...t, src_port: 40001 }), k);
  assertNotEquals(connKeyOf({ ...t, src: "10.0.0.8" }), k);
  const v6 = connKeyOf({ src: "FE80::7", src_port: 1, dst: "fe80::1", dst_port: 443 });
  assertEquals(typeof v6, "string");
  // Any text form of the same addresses: the same key.
  assertEquals(connKeyOf({ src: "fe80:0:0:0:0:0:0:7", src_port: 1, dst: "FE80::0:1", dst_port: 443 }), v6);
  assertNotEquals(connKeyOf({ src: "fe80::8", src_port: 1, dst: "fe80::1", dst_port: 443 }), v6);
  // Text that is no address keeps the text key.
  assertEquals(
    connKeyOf({ src: "fe80::7%eth0", src_port: 1, dst: "fe80::1", dst_port: 443 }),
    "fe80::7%eth0|1|fe80::1|443",
  );
  // A port out of range never aliases another tuple's number.
  assertEquals(typeof connKeyOf({ ...t, src_port: 70000 }), "string");
  // A key carried by the tuple wins (the EventView computes it once per event).
  assertEquals(connKeyOf({ ...t, connKey: 5 }), 5);
});

Deno.test("connKeyOf: distinct IPv4 tuples get distinct keys, text and bytes agree", () => {
  const view = new EventView();
  const seen = new Map<number | string, string>();
  fc.assert(
    fc.property(
      fc.ipV4(),
      fc.integer({ min: 0, max: 65535 }),
      fc.constantFrom("127.0.0.1", "10.9.8.7", "192.168.1.1"),
      fc.constantFrom(80, 443, 22080),
      fc.boolean(),
      (src, sport, dst, dport, mapped) => {
        const t = { src, src_port: sport, dst, dst_port: dport };
        const k = connKeyOf(t);
        const id = `${src}|${sport}|${dst}|${dport}`;
        const before = seen.get(k);
        if (before !== undefined) assertEquals(before, id, "two tuples share a key");
        seen.set(k, id);
        // The same tuple from a ring record (as AF_INET, or AF_INET6 with mapped addresses) has the same key.
        assert(view.load(closeRecord(src, sport, dst, dport, mapped)));
        assertEquals([view.src, view.src_port, view.dst, view.dst_port], [src, sport, dst, dport]);
        assertEquals(view.connKey, k);
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("parseV6 reads IPv6 text into its eight groups, and nothing else", async (t) => {
  const cases: [string, number[] | null][] = [
    ["::", [0, 0, 0, 0, 0, 0, 0, 0]],
    ["::1", [0, 0, 0, 0, 0, 0, 0, 1]],
    ["2001:DB8::8:800:200C:417A", [0x2001, 0xdb8, 0, 0, 0x8, 0x800, 0x200c, 0x417a]],
    ["1:2:3:4:5:6:7:8", [1, 2, 3, 4, 5, 6, 7, 8]],
    ["1::", [1, 0, 0, 0, 0, 0, 0, 0]],
    ["64:ff9b::192.0.2.33", [0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0221]],
    ["::ffff:10.1.2.3", [0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203]],
    ["1:2:3:4:5:6:7:8:9", null],
    ["1:2:3:4:5:6:7", null],
    ["1::2::3", null],
    ["12345::", null],
    [":::", null],
    ["1:::2", null],
    ["g::1", null],
    ["fe80::1%eth0", null],
    ["::1.2.3", null],
    ["10.1.2.3", null],
    ["", null],
  ];
  for (const [text, want] of cases) {
    await t.step(JSON.stringify(text), () => {
      const out: number[] = [];
      assertEquals(parseV6(text, out) ? out : null, want);
    });
  }
});

/** A CLOSE record for an IPv6 tuple given as group arrays. */
function close6(s: readonly number[], sport: number, d: readonly number[], dport: number): Uint8Array {
  const b = new Uint8Array(CLOSE_EVENT.size);
  const dv = new DataView(b.buffer);
  const f = EVENT_HDR.fields;
  dv.setUint8(f.kind.offset, EventKind.CLOSE);
  dv.setUint8(f.family.offset, Family.INET6);
  s.forEach((g, i) => dv.setUint16(f.saddr.offset + 2 * i, g));
  d.forEach((g, i) => dv.setUint16(f.daddr.offset + 2 * i, g));
  dv.setUint16(f.sport.offset, sport, true);
  dv.setUint16(f.dport.offset, dport, true);
  return b;
}

Deno.test("connKeyOf: distinct IPv6 tuples get distinct keys, text (any form) and bytes agree", () => {
  const view = new EventView();
  const seen = new Map<number | string, string>();
  const group = fc.integer({ min: 0, max: 0xffff });
  fc.assert(
    fc.property(
      fc.array(group, { minLength: 8, maxLength: 8 }),
      fc.integer({ min: 0, max: 65535 }),
      fc.constantFrom([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], [0xfe80, 0, 0, 0, 0, 0, 0, 0x1234]),
      fc.constantFrom(80, 443),
      (s, sport, d, dport) => {
        // IPv4-mapped sources are IPv4 tuples (numbers): left to the IPv4 property.
        fc.pre(!(s.slice(0, 5).every((g) => g === 0) && s[5] === 0xffff));
        const full = (g: readonly number[]) =>
          g.map((x) => x.toString(16).toUpperCase().padStart(4, "0")).join(":");
        assert(view.load(close6(s, sport, d, dport)));
        const k = view.connKey;
        assertEquals(typeof k, "string");
        // From the view's own text (RFC 5952, as rows carry it) and from the longest form.
        assertEquals(connKeyOf({ src: view.src, src_port: sport, dst: view.dst, dst_port: dport }), k);
        assertEquals(connKeyOf({ src: full(s), src_port: sport, dst: full(d), dst_port: dport }), k);
        const id = `${full(s)}|${sport}|${full(d)}|${dport}`;
        const before = seen.get(k);
        if (before !== undefined) assertEquals(before, id, "two tuples share a key");
        seen.set(k, id);
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("connKeyOf: past MAX_ENDPOINTS server endpoints, keys are strings, stable and still distinct", () => {
  // Fill the endpoint table (shared by the process: earlier tests may have used some of it).
  const keys: (number | string)[] = [];
  for (let p = 0; p < MAX_ENDPOINTS + 4; p++) {
    keys.push(connKeyOf({ src: "10.0.0.1", src_port: 1000, dst: "10.200.0.1", dst_port: 30000 + p }));
  }
  assertEquals(typeof keys.at(-1), "string");
  assertEquals(keys.at(-1), "10.0.0.1|1000|10.200.0.1|" + (30000 + MAX_ENDPOINTS + 3));
  assertEquals(new Set(keys).size, keys.length);
  // Asked again, each tuple gets the key it got first (an endpoint's index never changes).
  for (let p = 0; p < MAX_ENDPOINTS + 4; p++) {
    assertEquals(
      connKeyOf({ src: "10.0.0.1", src_port: 1000, dst: "10.200.0.1", dst_port: 30000 + p }),
      keys[p],
    );
  }
  assertEquals(v4Key(1, 1, 0x0ac80001, 30000 + MAX_ENDPOINTS + 3), -1);
});
