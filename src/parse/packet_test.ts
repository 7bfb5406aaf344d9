import { assert, assertEquals } from "../testing/asserts.ts";
import { decodePacket, ipv6Addr, TCP_ACK, TCP_SYN, type TcpSegment } from "./packet.ts";

const b = (...xs: (number | number[] | Uint8Array)[]) => {
  const out: number[] = [];
  for (const x of xs) {
    if (typeof x === "number") out.push(x);
    else out.push(...x);
  }
  return new Uint8Array(out);
};
const be16 = (v: number) => [v >> 8, v & 0xff];
const be32 = (v: number) => [v >>> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];

function tcp(sport: number, dport: number, flags: number, payload: number[] = [], options: number[] = []) {
  const doff = (20 + options.length) / 4;
  return b(
    be16(sport),
    be16(dport),
    be32(1000),
    be32(0),
    doff << 4,
    flags,
    be16(64240),
    0,
    0,
    0,
    0,
    options,
    payload,
  );
}

function ipv4(
  proto: number,
  payload: Uint8Array,
  opts: { ttl?: number; frag?: number; options?: number[] } = {},
) {
  const o = opts.options ?? [];
  const total = 20 + o.length + payload.length;
  return b(
    0x45 + o.length / 4,
    0,
    be16(total),
    0,
    1,
    be16(opts.frag ?? 0),
    opts.ttl ?? 64,
    proto,
    0,
    0,
    [
      10,
      0,
      0,
      1,
    ],
    [10, 0, 0, 2],
    o,
    payload,
  );
}

const V6_SRC = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
function ipv6(next: number, payload: Uint8Array, hop = 57) {
  return b(0x60, 0, 0, 0, be16(payload.length), next, hop, V6_SRC, V6_DST, payload);
}

const MAC = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const eth = (type: number, p: Uint8Array) => b(MAC, be16(type), p);

const T = tcp(40000, 443, TCP_SYN, [], [2, 4, 5, 0xb4, 1, 1, 4, 2]);
const V4 = ipv4(6, T, { ttl: 61 });
const V6 = ipv6(6, T);

function expectTcp(data: Uint8Array, linkType: number): TcpSegment {
  const r = decodePacket(linkType, data);
  if (!r.ok) throw new Error(`expected TCP, got ${r.error.code}: ${r.error.message}`);
  return r.value;
}

Deno.test("packet: link layers and tunnels down to TCP", async (t) => {
  const cases: [string, number, Uint8Array, 4 | 6][] = [
    ["ethernet ipv4", 1, eth(0x0800, V4), 4],
    ["ethernet ipv6", 1, eth(0x86dd, V6), 6],
    ["802.1Q", 1, eth(0x8100, b(0, 5, be16(0x0800), V4)), 4],
    ["QinQ 802.1ad + 802.1Q", 1, eth(0x88a8, b(0, 5, be16(0x8100), 0, 6, be16(0x86dd), V6)), 6],
    ["MPLS two labels", 1, eth(0x8847, b(0, 0, 0x10, 64, 0, 0, 0x21, 64, V4)), 4],
    ["NULL little-endian AF_INET", 0, b(2, 0, 0, 0, V4), 4],
    ["NULL big-endian AF_INET6 (macOS 30)", 0, b(0, 0, 0, 30, V6), 6],
    ["NULL little-endian AF_INET6 (BSD 24)", 0, b(24, 0, 0, 0, V6), 6],
    ["LOOP (network order)", 108, b(0, 0, 0, 2, V4), 4],
    ["raw 101", 101, V6, 6],
    ["raw 12", 12, V4, 4],
    ["raw 14", 14, V4, 4],
    ["IPv4 228", 228, V4, 4],
    ["IPv6 229", 229, V6, 6],
    ["Linux SLL", 113, b(0, 0, 0, 1, 0, 6, MAC.slice(0, 8), be16(0x0800), V4), 4],
    ["Linux SLL2", 276, b(be16(0x86dd), 0, 0, be32(2), 0, 1, 0, 6, MAC.slice(0, 8), V6), 6],
    ["GRE IPv4 with key", 1, eth(0x0800, ipv4(47, b(0x20, 0, be16(0x0800), be32(7), V4))), 4],
    ["GRE transparent Ethernet", 1, eth(0x0800, ipv4(47, b(0, 0, be16(0x6558), eth(0x0800, V4)))), 4],
    ["ERSPAN I (no header)", 1, eth(0x0800, ipv4(47, b(0, 0, be16(0x88be), eth(0x0800, V4)))), 4],
    [
      "ERSPAN II (sequence bit, 8-byte header)",
      1,
      eth(0x0800, ipv4(47, b(0x10, 0, be16(0x88be), be32(1), [0x10, 0, 0, 1, 0, 0, 0, 0], eth(0x0800, V4)))),
      4,
    ],
    [
      "ERSPAN III",
      1,
      eth(0x0800, ipv4(47, b(0x10, 0, be16(0x22eb), be32(1), new Array(12).fill(0), eth(0x86dd, V6)))),
      6,
    ],
    [
      "VXLAN",
      1,
      eth(
        0x0800,
        ipv4(17, b(be16(5555), be16(4789), be16(0), 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, eth(0x0800, V4))),
      ),
      4,
    ],
    [
      "VXLAN on the source port only",
      1,
      eth(
        0x0800,
        ipv4(17, b(be16(4789), be16(4790), be16(0), 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, eth(0x0800, V4))),
      ),
      4,
    ],
    [
      "Geneve with options, Ethernet payload",
      1,
      eth(
        0x0800,
        ipv4(
          17,
          b(be16(1), be16(6081), be16(0), 0, 0, 1, 0, be16(0x6558), 0, 0, 1, 0, be32(0), eth(0x0800, V4)),
        ),
      ),
      4,
    ],
    ["IPv6 in IPv4", 1, eth(0x0800, ipv4(41, V6)), 6],
    ["IPv4 options", 1, eth(0x0800, ipv4(6, T, { options: [1, 1, 1, 0] })), 4],
    ["IPv4 first fragment", 1, eth(0x0800, ipv4(6, T, { frag: 0x2000 })), 4],
    [
      "IPv6 hop-by-hop + destination options",
      1,
      eth(0x86dd, ipv6(0, b(60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0, T))),
      6,
    ],
    ["IPv6 first fragment", 1, eth(0x86dd, ipv6(44, b(6, 0, 0, 1, be32(9), T))), 6],
  ];
  for (const [name, lt, data, ver] of cases) {
    await t.step(name, () => {
      const s = expectTcp(data, lt);
      assertEquals(s.ipVersion, ver);
      assertEquals([s.srcPort, s.dstPort, s.seq, s.flags, s.window], [40000, 443, 1000, TCP_SYN, 64240]);
      assertEquals(Array.from(s.options), [2, 4, 5, 0xb4, 1, 1, 4, 2]);
      assertEquals(s.src, ver === 4 ? "10.0.0.1" : "2001:db8::1");
      assertEquals(s.dst, ver === 4 ? "10.0.0.2" : "2001:db8:1::2");
    });
  }
});

Deno.test("packet: payload is cut to the IP length (Ethernet padding)", () => {
  const seg = tcp(1, 2, TCP_ACK, [0x41, 0x42]);
  const s = expectTcp(eth(0x0800, b(ipv4(6, seg), 0, 0, 0, 0, 0, 0)), 1);
  assertEquals(Array.from(s.payload), [0x41, 0x42]);
});

Deno.test("packet: tunnels report the outermost TTL, and the inner one separately", () => {
  const inner = ipv4(6, T, { ttl: 64 });
  const s = expectTcp(eth(0x0800, ipv4(47, b(0, 0, be16(0x0800), inner), { ttl: 255 })), 1);
  assertEquals([s.ttl, s.innerTtl], [255, 64]);
  const v6 = expectTcp(eth(0x86dd, V6), 1);
  assertEquals([v6.ttl, v6.innerTtl], [57, 57]);
});

Deno.test("packet: TCP quoted in an ICMP error is flagged", () => {
  const quotedIp = ipv4(6, tcp(40000, 443, TCP_SYN).subarray(0, 8));
  const s = expectTcp(eth(0x0800, ipv4(1, b(3, 1, 0, 0, 0, 0, 0, 0, quotedIp))), 1);
  assert(s.icmpError === true);
  assertEquals([s.srcPort, s.dstPort, s.seq], [40000, 443, 1000]);
  assertEquals([s.ack, s.flags, s.window, s.options.length, s.payload.length], [0, 0, 0, 0, 0]);
});

Deno.test("packet: non-TCP and bad frames are typed results, never exceptions", async (t) => {
  const cases: [string, number, Uint8Array, string, string][] = [
    ["ARP", 1, eth(0x0806, new Uint8Array(28)), "unsupported", "ethertype 0x0806"],
    ["UDP", 1, eth(0x0800, ipv4(17, b(be16(53), be16(53), be16(8), 0, 0))), "unsupported", "udp"],
    ["ICMP echo", 1, eth(0x0800, ipv4(1, b(8, 0, 0, 0, 0, 0, 0, 0))), "unsupported", "icmp"],
    [
      "IPv4 non-first fragment",
      1,
      eth(0x0800, ipv4(6, T, { frag: 0x0010 })),
      "unsupported",
      "ipv4 non-first fragment",
    ],
    [
      "IPv6 non-first fragment",
      1,
      eth(0x86dd, ipv6(44, b(6, 0, 0, 0x18, be32(9), T))),
      "unsupported",
      "ipv6 non-first fragment",
    ],
    ["unknown link type", 147, V4, "unsupported", "link type 147"],
    ["short Ethernet", 1, b(1, 2, 3), "truncated", "ethernet header"],
    ["short IPv4", 1, eth(0x0800, b(0x45, 0, 0)), "truncated", "ipv4 header"],
    ["bad IHL", 1, eth(0x0800, b(0x42, new Array(30).fill(0))), "malformed", "ipv4 header length"],
    ["short TCP", 1, eth(0x0800, ipv4(6, T.subarray(0, 12))), "truncated", "tcp header"],
    [
      "TCP data offset < 5",
      1,
      eth(0x0800, ipv4(6, b(T.subarray(0, 12), 0x30, T.subarray(13)))),
      "malformed",
      "tcp data offset",
    ],
    [
      "TCP options past the end",
      1,
      eth(0x0800, ipv4(6, b(T.subarray(0, 12), 0xf0, T.subarray(13)))),
      "truncated",
      "tcp options",
    ],
    ["empty frame", 0, new Uint8Array(0), "truncated", "null/loopback header"],
  ];
  for (const [name, lt, data, code, msg] of cases) {
    await t.step(name, () => {
      const r = decodePacket(lt, data);
      assert(!r.ok, "expected a failure");
      assertEquals([r.error.code, r.error.message], [code, msg]);
    });
  }
  await t.step("random bytes never throw", () => {
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
    for (let i = 0; i < 3000; i++) {
      const d = new Uint8Array(rnd() % 120).map(rnd);
      // Steer some frames into the interesting paths.
      if (d.length > 14 && i % 2 === 0) (d[12] = 0x08), (d[13] = 0), (d[14] = 0x45);
      for (const lt of [0, 1, 101, 113, 276]) decodePacket(lt, d);
    }
  });
});

Deno.test("packet: IPv6 text form (RFC 5952)", async (t) => {
  const cases: [number[], string][] = [
    [[0, 0, 0, 0, 0, 0, 0, 1], "::1"],
    [[0x2001, 0xdb8, 0, 0, 1, 0, 0, 1], "2001:db8::1:0:0:1"],
    [[0x2001, 0xdb8, 0, 1, 1, 1, 1, 1], "2001:db8:0:1:1:1:1:1"],
    [[0xfe80, 0, 0, 0, 0x1c2, 0xfeff, 0xfe00, 0xabcd], "fe80::1c2:feff:fe00:abcd"],
    [[0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001], "::ffff:10.0.0.1"],
    [[0, 0, 0, 0, 0, 0, 0, 0], "::"],
  ];
  for (const [groups, want] of cases) {
    await t.step(want, () => {
      assertEquals(ipv6Addr(b(groups.flatMap(be16)), 0), want);
    });
  }
});
