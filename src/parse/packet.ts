/**
 * Link layer → IP → TCP decoding for captured frames, through the tunnels seen in practice (VLAN/QinQ,
 * MPLS, GRE incl. ERSPAN I/II/III, VXLAN, Geneve, IP-in-IP). Pure: bytes in, a TcpSegment or a typed reason
 * out. The innermost TCP header wins; the TTL reported is that of the IP header carrying it.
 */
import { be16, be32 } from "./bytes.ts";
import { formatIPv4, formatIPv6 } from "./addr.ts";
import { fail as newFail, ok, type Parsed } from "./errors.ts";

export const LINKTYPE_NULL = 0;
export const LINKTYPE_ETHERNET = 1;
export const LINKTYPE_RAW = 101;
export const LINKTYPE_LOOP = 108;
export const LINKTYPE_LINUX_SLL = 113;
export const LINKTYPE_IPV4 = 228;
export const LINKTYPE_IPV6 = 229;
export const LINKTYPE_LINUX_SLL2 = 276;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

const UDP_VXLAN = 4789;
const UDP_GENEVE = 6081;
/** Tunnels inside tunnels beyond this depth are treated as malformed (a loop guard). */
const MAX_DEPTH = 8;

export interface TcpSegment {
  ipVersion: 4 | 6;
  src: string;
  dst: string;
  /**
   * IPv4 TTL or IPv6 hop limit of the outermost IP header (what FoxIO's Rust tool reads through tshark's
   * first ip.ttl; for tunnelled traffic that is the tunnel's, not the inner client's).
   */
  ttl: number;
  /** TTL / hop limit of the IP header that carries the TCP segment (differs from ttl only in tunnels). */
  innerTtl: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  /** The 8 flag bits (CWR ECE URG ACK PSH RST SYN FIN). */
  flags: number;
  window: number;
  /** The raw option area (data offset × 4 − 20 bytes). */
  options: Uint8Array;
  /** TCP payload, cut to the IP length (Ethernet padding removed); may be short when the frame was snapped. */
  payload: Uint8Array;
  /**
   * True for the copy of a TCP header quoted inside an ICMP error: it names a connection (Wireshark gives it
   * that connection's stream number) but is not part of its traffic. Fields beyond the 8 quoted bytes are 0.
   */
  icmpError?: boolean;
}

type Result = Parsed<TcpSegment>;

// Every failure here is one of a few fixed (code, message) pairs, and captures are full of frames that are
// skipped for the same reason (UDP, ARP, ...): building a ParseError (an Error, with its stack trace) for
// each was ~9 % of `fingerprint --pcap` on a capture with 10 % UDP. Results are read-only, so one per pair is
// shared. Bounded: messages with a number in them (link type, ethertype, protocol) have few values.
const failures = new Map<string, Result>();
function fail(code: "truncated" | "malformed" | "unsupported", message: string): Result {
  const key = code + message;
  let r = failures.get(key);
  if (r === undefined) {
    r = newFail(code, message);
    if (failures.size < 4096) failures.set(key, r);
  }
  return r;
}

// Address text per IPv4 address: a capture holds few distinct addresses, and formatting four numbers for
// both ends of every packet showed in the profile. Emptied when full.
const v4Text = new Map<number, string>();
const NO_BYTES = new Uint8Array(0);

/** TTL of the first IP header of the frame being decoded (decoding is synchronous, so one slot suffices). */
let outerTtl = -1;

/** Decodes one captured frame of the given LINKTYPE. Non-TCP traffic is `unsupported`, bad bytes `malformed`/`truncated`. */
export function decodePacket(linkType: number, data: Uint8Array): Result {
  outerTtl = -1;
  switch (linkType) {
    case LINKTYPE_ETHERNET:
      return ethernet(data, 0, 0);
    case LINKTYPE_NULL: {
      if (data.length < 4) return fail("truncated", "null/loopback header");
      // Host byte order of the capturing machine: the family fits in one byte, so pick the order that does.
      const le = data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24);
      const fam = le > 0xffff ? be32(data, 0) : le;
      return loopFamily(fam, data.subarray(4));
    }
    case LINKTYPE_LOOP:
      if (data.length < 4) return fail("truncated", "loop header");
      return loopFamily(be32(data, 0), data.subarray(4));
    case LINKTYPE_RAW:
    case 12:
    case 14:
      return ipAny(data, 0);
    case LINKTYPE_IPV4:
      return ipv4(data, 0);
    case LINKTYPE_IPV6:
      return ipv6(data, 0);
    case LINKTYPE_LINUX_SLL:
      if (data.length < 16) return fail("truncated", "linux cooked header");
      return etherType(be16(data, 14), data.subarray(16), 0);
    case LINKTYPE_LINUX_SLL2:
      if (data.length < 20) return fail("truncated", "linux cooked v2 header");
      return etherType(be16(data, 0), data.subarray(20), 0);
    default:
      return fail("unsupported", `link type ${linkType}`);
  }
}

function loopFamily(fam: number, rest: Uint8Array): Result {
  if (fam === 2) return ipv4(rest, 0);
  // AF_INET6 differs per BSD: 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS), 10 (Linux).
  if (fam === 24 || fam === 28 || fam === 30 || fam === 10) return ipv6(rest, 0);
  return fail("unsupported", `loopback family ${fam}`);
}

function ethernet(b: Uint8Array, o: number, depth: number): Result {
  if (b.length - o < 14) return fail("truncated", "ethernet header");
  return etherType(be16(b, o + 12), b.subarray(o + 14), depth);
}

function etherType(type: number, b: Uint8Array, depth: number): Result {
  let o = 0;
  // 802.1Q, 802.1ad (QinQ) and the old 0x9100 QinQ tag: 4 bytes each, stacked.
  while (type === 0x8100 || type === 0x88a8 || type === 0x9100) {
    if (b.length - o < 4) return fail("truncated", "vlan tag");
    type = be16(b, o + 2);
    o += 4;
  }
  switch (type) {
    case 0x0800:
      return ipv4(b.subarray(o), depth);
    case 0x86dd:
      return ipv6(b.subarray(o), depth);
    case 0x8847:
    case 0x8848: {
      // MPLS: pop labels to the bottom of the stack, then guess IPv4/IPv6 from the version nibble.
      for (;;) {
        if (b.length - o < 4) return fail("truncated", "mpls label");
        const bottom = b[o + 2] & 1;
        o += 4;
        if (bottom) break;
      }
      return ipAny(b.subarray(o), depth);
    }
    default:
      return fail(
        "unsupported",
        type < 0x600 ? "802.3 frame" : `ethertype 0x${type.toString(16).padStart(4, "0")}`,
      );
  }
}

function ipAny(b: Uint8Array, depth: number): Result {
  if (b.length < 1) return fail("truncated", "ip header");
  const v = b[0] >> 4;
  if (v === 4) return ipv4(b, depth);
  if (v === 6) return ipv6(b, depth);
  return fail("unsupported", `ip version ${v}`);
}

function ipv4Addr(b: Uint8Array, o: number): string {
  const n = be32(b, o);
  let t = v4Text.get(n);
  if (t === undefined) {
    if (v4Text.size >= 65536) v4Text.clear();
    t = formatIPv4(b, o);
    v4Text.set(n, t);
  }
  return t;
}

/** RFC 5952 text form (the one Wireshark prints), IPv4-mapped addresses as ::ffff:a.b.c.d. */
export function ipv6Addr(b: Uint8Array, o: number): string {
  return formatIPv6(b, o, "v6");
}

function ipv4(b: Uint8Array, depth: number, inIcmp = false): Result {
  if (b.length < 20) return fail("truncated", "ipv4 header");
  if (b[0] >> 4 !== 4) return fail("malformed", "ipv4 version");
  const ihl = (b[0] & 0x0f) * 4;
  if (ihl < 20) return fail("malformed", "ipv4 header length");
  if (b.length < ihl) return fail("truncated", "ipv4 options");
  let total = be16(b, 2);
  // 0 means TSO/GSO offload on the capturing host: trust the captured length.
  // A quoted header inside an ICMP error keeps its original length although the quote is cut short.
  if (total === 0 || inIcmp) total = b.length;
  if (total < ihl) return fail("malformed", "ipv4 total length");
  const fragOff = be16(b, 6) & 0x1fff;
  if (fragOff !== 0) return fail("unsupported", "ipv4 non-first fragment");
  const proto = b[9];
  const payload = b.subarray(ihl, Math.min(total, b.length));
  return ipPayload(proto, payload, 4, b, 12, 16, b[8], depth, inIcmp);
}

function ipv6(b: Uint8Array, depth: number, inIcmp = false): Result {
  if (b.length < 40) return fail("truncated", "ipv6 header");
  if (b[0] >> 4 !== 6) return fail("malformed", "ipv6 version");
  const plen = be16(b, 4);
  const end = plen === 0 || inIcmp ? b.length : Math.min(40 + plen, b.length);
  let next = b[6];
  let o = 40;
  // Extension headers before the upper layer.
  for (;;) {
    if (next === 0 || next === 43 || next === 60 || next === 135 || next === 139 || next === 140) {
      if (end - o < 8) return fail("truncated", "ipv6 extension header");
      const n = b[o];
      o += (b[o + 1] + 1) * 8;
      next = n;
    } else if (next === 44) {
      if (end - o < 8) return fail("truncated", "ipv6 fragment header");
      if ((be16(b, o + 2) & 0xfff8) !== 0) return fail("unsupported", "ipv6 non-first fragment");
      next = b[o];
      o += 8;
    } else if (next === 51) {
      if (end - o < 8) return fail("truncated", "ipv6 authentication header");
      const n = b[o];
      o += (b[o + 1] + 2) * 4;
      next = n;
    } else break;
    if (o > end) return fail("truncated", "ipv6 extension header");
  }
  return ipPayload(next, b.subarray(o, end), 6, b, 8, 24, b[7], depth, inIcmp);
}

function ipPayload(
  proto: number,
  p: Uint8Array,
  ver: 4 | 6,
  hdr: Uint8Array,
  srcOff: number,
  dstOff: number,
  ttl: number,
  depth: number,
  inIcmp: boolean,
): Result {
  if (depth > MAX_DEPTH) return fail("malformed", "tunnel nesting too deep");
  if (outerTtl < 0 && !inIcmp) outerTtl = ttl;
  switch (proto) {
    case 6:
      return tcp(p, ver, hdr, srcOff, dstOff, ttl, inIcmp);
    case 4:
      return ipv4(p, depth + 1);
    case 41:
      return ipv6(p, depth + 1);
    case 47:
      return gre(p, depth + 1);
    case 17:
      return udp(p, depth + 1);
    case 1:
      // Destination unreachable, source quench, redirect, time exceeded, parameter problem quote the packet.
      if (p.length >= 8 && (p[0] === 3 || p[0] === 4 || p[0] === 5 || p[0] === 11 || p[0] === 12)) {
        return quoted(ipv4(p.subarray(8), depth + 1, true));
      }
      return fail("unsupported", "icmp");
    case 58:
      if (p.length >= 8 && p[0] >= 1 && p[0] <= 4) return quoted(ipv6(p.subarray(8), depth + 1, true));
      return fail("unsupported", "icmpv6");
    default:
      return fail("unsupported", `ip protocol ${proto}`);
  }
}

function quoted(r: Result): Result {
  if (r.ok) r.value.icmpError = true;
  return r.ok ? r : fail("unsupported", "icmp error without tcp");
}

function tcp(
  p: Uint8Array,
  ver: 4 | 6,
  hdr: Uint8Array,
  srcOff: number,
  dstOff: number,
  ttl: number,
  inIcmp: boolean,
): Result {
  // A header quoted by an ICMP error may hold only its first 8 bytes: the ports and the sequence number.
  const quoted = inIcmp && p.length >= 8 && p.length < 20;
  let doff = 0;
  if (!quoted) {
    if (p.length < 20) return fail("truncated", "tcp header");
    doff = (p[12] >> 4) * 4;
    if (doff < 20) return fail("malformed", "tcp data offset");
    if (p.length < doff) return fail("truncated", "tcp options");
  }
  return ok({
    ipVersion: ver,
    src: ver === 4 ? ipv4Addr(hdr, srcOff) : ipv6Addr(hdr, srcOff),
    dst: ver === 4 ? ipv4Addr(hdr, dstOff) : ipv6Addr(hdr, dstOff),
    ttl: outerTtl < 0 ? ttl : outerTtl,
    innerTtl: ttl,
    srcPort: be16(p, 0),
    dstPort: be16(p, 2),
    seq: be32(p, 4),
    ack: quoted ? 0 : be32(p, 8),
    flags: quoted ? 0 : p[13],
    window: quoted ? 0 : be16(p, 14),
    options: quoted ? NO_BYTES : p.subarray(20, doff),
    payload: quoted ? NO_BYTES : p.subarray(doff),
  });
}

function udp(p: Uint8Array, depth: number): Result {
  if (p.length < 8) return fail("truncated", "udp header");
  const sport = be16(p, 0);
  const dport = be16(p, 2);
  const body = p.subarray(8);
  // Like Wireshark, a tunnel port on either side selects the tunnel (some senders use it as source).
  const port = dport === UDP_VXLAN || dport === UDP_GENEVE ? dport : sport;
  if (port === UDP_VXLAN) {
    // VXLAN: 8-byte header (I flag must be set), then an Ethernet frame.
    if (body.length < 8) return fail("truncated", "vxlan header");
    if (!(body[0] & 0x08)) return fail("malformed", "vxlan flags");
    return ethernet(body, 8, depth);
  }
  if (port === UDP_GENEVE) {
    if (body.length < 8) return fail("truncated", "geneve header");
    const hlen = 8 + (body[0] & 0x3f) * 4;
    if (body.length < hlen) return fail("truncated", "geneve options");
    const proto = be16(body, 2);
    if (proto === 0x6558) return ethernet(body, hlen, depth);
    return etherType(proto, body.subarray(hlen), depth);
  }
  return fail("unsupported", "udp");
}

function gre(p: Uint8Array, depth: number): Result {
  if (p.length < 4) return fail("truncated", "gre header");
  const flags = be16(p, 0);
  const ver = flags & 7;
  const proto = be16(p, 2);
  let o = 4;
  if (ver === 0) {
    if (flags & 0xc000) o += 4; // checksum (and offset) present when C or R is set
    if (flags & 0x2000) o += 4; // key
    if (flags & 0x1000) o += 4; // sequence number
  } else if (ver === 1) {
    return fail("unsupported", "enhanced gre (pptp)");
  } else return fail("unsupported", `gre version ${ver}`);
  if (p.length < o) return fail("truncated", "gre header");
  const rest = p.subarray(o);
  switch (proto) {
    case 0x6558: // transparent Ethernet bridging
      return ethernet(rest, 0, depth);
    case 0x88be: // ERSPAN type II has an 8-byte header when the S bit is set; type I has none
      return ethernet(rest, flags & 0x1000 ? 8 : 0, depth);
    case 0x22eb: { // ERSPAN type III: 12 bytes, plus an 8-byte platform sub-header when O is set
      if (rest.length < 12) return fail("truncated", "erspan iii header");
      return ethernet(rest, rest[11] & 0x01 ? 20 : 12, depth);
    }
    default:
      return etherType(proto, rest, depth);
  }
}
