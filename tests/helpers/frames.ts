/**
 * Synthetic Ethernet frames for running the tc program on (BPF_PROG_TEST_RUN): the packets of a plain-HTTP
 * connection between 127.0.0.2:40000 and a server on 127.0.0.1:8080, each kind by name.
 */
export const SERVER = 8080, CLIENT = 40_000;
export const FIN = 0x01, SYN = 0x02, PSH = 0x08, ACK = 0x10;
/** Where a frame's TCP options begin (Ethernet, IPv4 and TCP headers), and its payload when it has none. */
export const OPTIONS_AT = 14 + 20 + 20;
/** TCP options of a short SYN: MSS 1460 alone. */
export const MSS_ONLY = [2, 4, 5, 0xb4];

/** An Ethernet + IPv4 + TCP frame from 127.0.0.2:sport to 127.0.0.1:dport; `payload` bytes of plain text. */
export function frame(
  sport: number,
  dport: number,
  flags: number,
  payload = 0,
  options: number[] = [],
  seq = 1000,
): Uint8Array<ArrayBuffer> {
  const tcpLen = 20 + options.length, ipLen = 20 + tcpLen + payload;
  const b = new Uint8Array(14 + ipLen), dv = new DataView(b.buffer);
  dv.setUint16(12, 0x0800);
  const ip = 14;
  b[ip] = 0x45;
  dv.setUint16(ip + 2, ipLen);
  dv.setUint16(ip + 6, 0x4000); // DF
  b[ip + 8] = 64;
  b[ip + 9] = 6;
  b.set([127, 0, 0, 2], ip + 12);
  b.set([127, 0, 0, 1], ip + 16);
  const t = ip + 20;
  dv.setUint16(t, sport);
  dv.setUint16(t + 2, dport);
  dv.setUint32(t + 4, seq);
  dv.setUint32(t + 8, flags & ACK ? 2000 : 0);
  b[t + 12] = (tcpLen / 4) << 4;
  b[t + 13] = flags;
  dv.setUint16(t + 14, 65535);
  b.set(options, t + 20);
  for (let i = 0; i < payload; i++) b[t + tcpLen + i] = 0x41 + (i % 26); // plain text, not a TLS record
  return b;
}

/** MSS 65495, SACK permitted, timestamps, NOP, window scale 7: a Linux client's SYN. */
const SYN_OPTIONS = [2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];

/** The kinds of packet tc sees, most of them for nothing. */
export const PACKETS: [string, Uint8Array<ArrayBuffer>][] = [
  ["bare ACK, client → server", frame(CLIENT, SERVER, ACK)],
  ["bare ACK, server → client", frame(SERVER, CLIENT, ACK)],
  ["response, server → client (200 B)", frame(SERVER, CLIENT, ACK | PSH, 200)],
  ["request, client → server, no flow (keep-alive)", frame(CLIENT, SERVER, ACK | PSH, 80)],
  ["FIN, client → server, no flow", frame(CLIENT, SERVER, ACK | FIN)],
  ["SYN, client → server", frame(CLIENT, SERVER, SYN, 0, SYN_OPTIONS)],
  ["not watched: request to another port", frame(CLIENT, 9999, ACK | PSH, 80)],
];
