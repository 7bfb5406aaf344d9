/**
 * JA4L (client) and JA4LS (server) light-distance latencies (spec §6), FoxIO License 1.1 (patent pending).
 * Rust-tool semantics: integer microseconds, each value half a round trip, truncated towards zero, computed
 * from the whole difference. The optional third section (application-handshake latency) is what the
 * Wireshark plugin and Zeek add; the Rust tool prints two sections.
 */

/** Handshake timestamps in microseconds (any common origin). */
export interface Ja4lTimes {
  /** A: client's SYN. */
  a?: number;
  /** B: server's SYN-ACK. */
  b?: number;
  /** C: client's ACK completing the handshake (from the client only; spec §6.2 recommendation). */
  c?: number;
  /** D: client's first payload packet. */
  d?: number;
  /** E: server's first payload packet after D. */
  e?: number;
  /** F: client's next payload packet after E. */
  f?: number;
}

export interface Ja4lOptions {
  /** Append the third section when the needed timestamps are known (Wireshark/Zeek form). */
  appLatency?: boolean;
}

function half(from: number | undefined, to: number | undefined): number | undefined {
  if (from === undefined || to === undefined || to < from) return undefined;
  return Math.trunc((to - from) / 2);
}

/** JA4L (Rust `ja4l_c`): `(C−B)/2 _ clientTTL [_ (F−E)/2]`; undefined without B and C. */
export function ja4lClient(t: Ja4lTimes, clientTtl: number, opts: Ja4lOptions = {}): string | undefined {
  const first = half(t.b, t.c);
  if (first === undefined) return undefined;
  const third = opts.appLatency ? half(t.e, t.f) : undefined;
  return third === undefined ? `${first}_${clientTtl}` : `${first}_${clientTtl}_${third}`;
}

/** JA4LS (Rust `ja4l_s`): `(B−A)/2 _ serverTTL [_ (E−D)/2]`; undefined without A and B. */
export function ja4lServer(t: Ja4lTimes, serverTtl: number, opts: Ja4lOptions = {}): string | undefined {
  const first = half(t.a, t.b);
  if (first === undefined) return undefined;
  const third = opts.appLatency ? half(t.d, t.e) : undefined;
  return third === undefined ? `${first}_${serverTtl}` : `${first}_${serverTtl}_${third}`;
}
