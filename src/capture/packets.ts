/**
 * Packet side of the capture: client SYNs (→ JA4T) and the first client bytes of new connections
 * (→ the ClientHello, reassembled by stream offset across segments, retransmits dropped) as the TC
 * ingress program reports them. Bounded: flows are forgotten once their hello is out, after `idleNs`, or
 * least recently used first past `maxFlows`.
 */
import { StreamAssembler } from "./assembler.ts";
import { LruMap } from "./lru.ts";
import { HS_CLIENT_HELLO, parseClientHello, TlsHandshakeReader, wholeClientHello } from "../parse/tls.ts";
import type { Parsed } from "../parse/errors.ts";
import type { ClientHello } from "../parse/tls.ts";
import { type Ja4, ja4 } from "../fingerprint/ja4.ts";
import { type AbsentConvention, ja4t } from "../fingerprint/ja4t.ts";
import type { Tuple } from "../sink/row.ts";
import { type ConnKey, connKeyOf, type Keyed } from "./connkey.ts";

/** What JA4T reads of a client SYN. */
export interface SynFacts {
  window: number;
  options: Uint8Array;
}

export interface SegmentFacts extends Keyed {
  tsNs: number;
  /** Stream offset of bytes[0], counted from ISN + 1 by the kernel's flow (it sends no segment without one). */
  offset: number;
  bytes: Uint8Array;
}

export interface HelloOut extends Tuple {
  /** The connection's key, as the correlator looks it up. */
  connKey: ConnKey;
  tsNs: number;
  hello: ClientHello;
  fp: Ja4;
}

export interface PacketTrackerStats {
  flows: number;
  syns: number;
  segments: number;
  hellos: number;
  not_tls: number;
  parse_errors: number;
  evicted: number;
}

/** Created by a connection's first payload segment: a SYN alone (every plain-HTTP connection) costs no entry. */
interface Flow {
  asm: StreamAssembler | null;
  tls: TlsHandshakeReader | null;
  lastNs: number;
}

export class PacketTracker {
  /**
   * Live flows, and finished ones (hello out, or not TLS) as tombstones: just the time last seen (ns), so a
   * tombstone costs its map entry only. It stays until idle so later segments are ignored cheaply.
   */
  private readonly flows: LruMap<ConnKey, Flow | number>;
  private readonly s: PacketTrackerStats = {
    flows: 0,
    syns: 0,
    segments: 0,
    hellos: 0,
    not_tls: 0,
    parse_errors: 0,
    evicted: 0,
  };

  constructor(
    private readonly opts: { maxFlows?: number; idleNs?: number; ja4tAbsent?: AbsentConvention } = {},
  ) {
    this.flows = new LruMap(opts.maxFlows ?? 65536, Infinity, () => this.s.evicted++);
  }

  stats(): PacketTrackerStats {
    return { ...this.s, flows: this.flows.size };
  }

  /**
   * A client SYN (carried by the server's first read of its connection, after any of its segments): returns
   * its JA4T. No flow starts here (the kernel orders segments from ISN + 1 itself, and plain-HTTP connections
   * never send one).
   */
  syn(f: SynFacts): string {
    this.s.syns++;
    return ja4t({ window: f.window, options: f.options }, { absent: this.opts.ja4tAbsent ?? "foxio" });
  }

  /** First client bytes of a connection; returns the ClientHello once it is whole. */
  segment(f: SegmentFacts): HelloOut | undefined {
    this.s.segments++;
    const key = connKeyOf(f);
    let got = this.flows.get(key);
    const rel = f.offset >>> 0;
    if (typeof got === "number") {
      // Finished. The kernel sends offset 0 only from a flow its SYN just started: on a tombstone, that is a
      // new connection on a reused port (its close was not seen).
      if (rel !== 0) return undefined;
      this.flows.delete(key);
      got = undefined;
    }
    if (rel > 1 << 20) return undefined; // far beyond what we track
    if (got === undefined && rel === 0) {
      // A connection's first segment holding its whole ClientHello (nearly every TLS connection), or not
      // TLS at all: decided from these bytes alone, with no flow, assembler or reader made for it.
      const b = f.bytes;
      if (notTls(b)) {
        this.s.not_tls++;
        this.flows.set(key, f.tsNs);
        return undefined;
      }
      const body = wholeClientHello(b);
      if (body !== undefined) {
        this.flows.set(key, f.tsNs);
        return this.hello(f, key, parseClientHello(body));
      }
    }
    const flow = got ?? this.newFlow(key, f.tsNs);
    flow.lastNs = f.tsNs;
    // Offsets count from ISN + 1: the stream starts at 0 whichever segment tc reports first (reordered).
    const asm = flow.asm ??= new StreamAssembler(64 * 1024, 0);
    const tls = flow.tls ??= new TlsHandshakeReader();
    const { out } = asm.push(rel, f.bytes);
    for (const piece of out) {
      if (asm.stats.delivered === piece.length && notTls(piece)) {
        // Not TLS (plain HTTP on this port): nothing to fingerprint here.
        this.s.not_tls++;
        this.finish(key, flow);
        return undefined;
      }
      tls.push(piece);
    }
    for (;;) {
      const m = tls.next();
      if (!m.ok) {
        if (!m.needMore) {
          this.s.parse_errors++;
          this.finish(key, flow);
        } else tls.ownBuffered(); // the hello continues in the next segment: keep these bytes, copied
        return undefined;
      }
      if (m.value.type !== HS_CLIENT_HELLO) continue;
      const ch = parseClientHello(m.value.body);
      this.finish(key, flow);
      return this.hello(f, key, ch);
    }
  }

  /** A parsed ClientHello out (its flow already finished), or counted when it did not parse. */
  private hello(f: SegmentFacts, key: ConnKey, ch: Parsed<ClientHello>): HelloOut | undefined {
    if (!ch.ok) {
      this.s.parse_errors++;
      return undefined;
    }
    this.s.hellos++;
    return {
      src: f.src,
      src_port: f.src_port,
      dst: f.dst,
      dst_port: f.dst_port,
      connKey: key,
      tsNs: f.tsNs,
      hello: ch.value,
      fp: ja4(ch.value),
    };
  }

  /**
   * The server closed the connection: its flow goes at once (a plain-HTTP connection's flow never sees a
   * payload segment — tc does not send one — so it would otherwise wait for the idle expiry).
   */
  close(t: Keyed): void {
    // Ports whose connections begin in plain text make no flows (the kernel side's JA4_PORT_PLAIN).
    if (this.flows.size !== 0) this.flows.delete(connKeyOf(t));
  }

  /** Forgets flows idle for longer than idleNs (default 30 s). */
  expire(nowNs: number): void {
    const idle = this.opts.idleNs ?? 30e9;
    // Least recently used first: stop at the first flow still in use.
    for (let n = this.flows.oldest(); n !== undefined; n = this.flows.oldest()) {
      const v = n.value;
      const last = typeof v === "number" ? v : v.lastNs;
      if (nowNs - last <= idle) break;
      this.flows.delete(n.key);
      this.s.evicted++;
    }
  }

  private finish(key: ConnKey, flow: Flow): void {
    this.flows.set(key, flow.lastNs);
  }

  private newFlow(key: ConnKey, tsNs: number): Flow {
    const flow: Flow = {
      asm: null,
      tls: null,
      lastNs: tsNs,
    };
    this.flows.set(key, flow);
    return flow;
  }
}

/**
 * A stream's first bytes that cannot start a TLS handshake record: a first byte other than 0x16, or a second
 * one other than 3. One byte alone (DPI-evasion tools split a hello so) waits for the next.
 */
function notTls(b: Uint8Array): boolean {
  return b.length >= 1 && (b[0] !== 0x16 || (b.length >= 2 && b[1] !== 0x03));
}
