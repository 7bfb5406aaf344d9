/**
 * Packet side of the capture: client SYNs (→ JA4T) and the first client bytes of new connections
 * (→ the ClientHello, reassembled by TCP sequence number across segments, retransmits dropped) as the TC
 * ingress program reports them. Bounded: flows are forgotten once their hello is out, after `idleNs`, or
 * least recently used first past `maxFlows`.
 */
import { StreamAssembler } from "./assembler.ts";
import { HS_CLIENT_HELLO, parseClientHello, TlsHandshakeReader } from "../parse/tls.ts";
import type { ClientHello } from "../parse/tls.ts";
import { type Ja4, ja4 } from "../fingerprint/ja4.ts";
import { type AbsentConvention, ja4t } from "../fingerprint/ja4t.ts";
import type { Tuple } from "./requests.ts";

export interface SynFacts extends Tuple {
  tsNs: bigint;
  seq: number;
  window: number;
  options: Uint8Array;
}

export interface SegmentFacts extends Tuple {
  tsNs: bigint;
  seq: number;
  bytes: Uint8Array;
}

export interface HelloOut extends Tuple {
  tsNs: bigint;
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

interface Flow {
  /** Sequence number of the first payload byte (ISN + 1), once known. */
  base: number | undefined;
  asm: StreamAssembler;
  tls: TlsHandshakeReader;
  lastNs: bigint;
  done: boolean;
}

const DONE_ASM = new StreamAssembler(0);
const DONE_TLS = new TlsHandshakeReader();

export function tupleKey(t: Tuple): string {
  return `${t.src}|${t.src_port}|${t.dst}|${t.dst_port}`;
}

export class PacketTracker {
  private flows = new Map<string, Flow>();
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
    private readonly opts: { maxFlows?: number; idleNs?: bigint; ja4tAbsent?: AbsentConvention } = {},
  ) {}

  stats(): PacketTrackerStats {
    return { ...this.s, flows: this.flows.size };
  }

  /** A client SYN: returns its JA4T, and starts a flow so the hello's segments are ordered from ISN + 1. */
  syn(f: SynFacts): string {
    this.s.syns++;
    const flow = this.newFlow(tupleKey(f), f.tsNs);
    flow.base = (f.seq + 1) >>> 0;
    return ja4t({ window: f.window, options: f.options }, { absent: this.opts.ja4tAbsent ?? "foxio" });
  }

  /** First client bytes of a connection; returns the ClientHello once it is whole. */
  segment(f: SegmentFacts): HelloOut | undefined {
    this.s.segments++;
    const key = tupleKey(f);
    let flow = this.flows.get(key);
    if (!flow) flow = this.newFlow(key, f.tsNs);
    if (flow.done) return undefined;
    flow.lastNs = f.tsNs;
    // The SYN may have been missed (connection older than the agent): the first segment seen sets the base.
    if (flow.base === undefined) flow.base = f.seq >>> 0;
    const rel = (f.seq - flow.base) >>> 0;
    if (rel > 1 << 20) return undefined; // before the base (old retransmit) or far beyond what we track
    const { out } = flow.asm.push(rel, f.bytes);
    for (const piece of out) {
      if (flow.asm.stats.delivered === piece.length && !(piece[0] === 0x16 && piece[1] === 0x03)) {
        // Not TLS (plain HTTP on this port): nothing to fingerprint here.
        this.s.not_tls++;
        this.finish(key, flow);
        return undefined;
      }
      flow.tls.push(piece);
    }
    for (;;) {
      const m = flow.tls.next();
      if (!m.ok) {
        if (!m.needMore) {
          this.s.parse_errors++;
          this.finish(key, flow);
        }
        return undefined;
      }
      if (m.value.type !== HS_CLIENT_HELLO) continue;
      const ch = parseClientHello(m.value.body);
      this.finish(key, flow);
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
        tsNs: f.tsNs,
        hello: ch.value,
        fp: ja4(ch.value),
      };
    }
  }

  /** Forgets flows idle for longer than idleNs (default 30 s). */
  expire(nowNs: bigint): void {
    const idle = this.opts.idleNs ?? 30_000_000_000n;
    for (const [k, f] of this.flows) {
      if (nowNs - f.lastNs > idle) {
        this.flows.delete(k);
        this.s.evicted++;
      }
    }
  }

  private finish(key: string, flow: Flow): void {
    // A tombstone sharing one empty assembler and reader: later segments of this flow are ignored cheaply
    // and it ages out in expire().
    flow.done = true;
    flow.asm = DONE_ASM;
    flow.tls = DONE_TLS;
    this.flows.set(key, flow);
  }

  private newFlow(key: string, tsNs: bigint): Flow {
    const flow: Flow = {
      base: undefined,
      asm: new StreamAssembler(64 * 1024),
      tls: new TlsHandshakeReader(),
      lastNs: tsNs,
      done: false,
    };
    this.flows.delete(key);
    this.flows.set(key, flow);
    if (this.flows.size > (this.opts.maxFlows ?? 65536)) {
      this.flows.delete(this.flows.keys().next().value!);
      this.s.evicted++;
    }
    return flow;
  }
}
