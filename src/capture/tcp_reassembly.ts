/**
 * TCP connection tracking for captured packets: Wireshark-compatible stream numbers, client/server roles,
 * the SYN / SYN-ACK facts JA4T, JA4TS and JA4L need, and one in-order byte stream per direction.
 *
 * Caps (fingerprints need the first few KB of each direction plus HTTP request heads, never a whole transfer):
 * - a direction delivers at most `maxStreamBytes` (default 1 MiB) in order, then stops: HTTP requests that
 *   start after the first MiB a client sent on one keep-alive connection are not seen. A consumer that
 *   streams without buffering (TLS decryption) may raise one direction's `cap`;
 * - out-of-order data waiting for a hole is held up to `maxPendingBytes` (64 KiB) / `maxPendingSegments` (64);
 *   beyond that the hole is declared lost (a gap: the consumer is told and the stream jumps forward);
 * - a consumer that has what it needs detaches (`onData = null`), after which segments are not copied at all.
 */
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, type TcpSegment } from "../parse/packet.ts";

export interface ReassemblyLimits {
  maxStreamBytes: number;
  maxPendingBytes: number;
  maxPendingSegments: number;
}

export const DEFAULT_LIMITS: ReassemblyLimits = {
  maxStreamBytes: 1 << 20,
  maxPendingBytes: 64 * 1024,
  maxPendingSegments: 64,
};

export interface DirectionStats {
  /** Segments whose bytes had all been delivered already (retransmissions). */
  retransmitted: number;
  /** Segments that partly overlapped delivered bytes (the overlap was dropped, first copy wins). */
  overlaps: number;
  /** Segments that arrived ahead of a hole and waited. */
  outOfOrder: number;
  /** Holes given up on. */
  gaps: number;
  /** Bytes skipped over by gaps. */
  gapBytes: number;
  /** Segments dropped because the direction had reached maxStreamBytes. */
  overCap: number;
}

/** One direction of a connection: turns segments in any order into an in-order byte stream. */
export class TcpDirection {
  /**
   * Receives the in-order bytes with the capture time of the segment that completed them. The bytes are only
   * valid during the call (they may be a view of the capture reader's buffer, which the next packet
   * overwrites): a consumer that keeps them copies them. Copying every segment here cost more than any
   * parsing done on it.
   */
  onData: ((bytes: Uint8Array, tsMicros: number) => void) | null = null;
  /** Told when bytes were lost; the stream continues after the hole. */
  onGap: ((lost: number) => void) | null = null;
  readonly stats: DirectionStats = {
    retransmitted: 0,
    overlaps: 0,
    outOfOrder: 0,
    gaps: 0,
    gapBytes: 0,
    overCap: 0,
  };
  /** Bytes delivered so far. */
  delivered = 0;
  /** Bytes this direction delivers at most (starts at maxStreamBytes; a streaming consumer may raise it). */
  cap: number;
  /** Sequence number of the next byte expected (undefined until the first SYN or data). */
  private next: number | undefined;
  private pending: { seq: number; data: Uint8Array; ts: number }[] = [];
  private pendingBytes = 0;

  constructor(private limits: ReassemblyLimits = DEFAULT_LIMITS) {
    this.cap = limits.maxStreamBytes;
  }

  /** The initial sequence number when the SYN was seen. */
  isn: number | undefined;

  /** True once nothing more will be delivered (consumer detached or cap reached). */
  get closed(): boolean {
    return this.onData === null || this.delivered >= this.cap;
  }

  /** Feeds one segment of this direction. */
  push(seq: number, flags: number, payload: Uint8Array, tsMicros: number): void {
    if (flags & TCP_SYN) {
      if (this.isn === undefined && this.delivered === 0 && this.pending.length === 0) {
        this.isn = seq;
        this.next = (seq + 1) >>> 0;
      }
      seq = (seq + 1) >>> 0; // data on a SYN (TCP Fast Open) starts after it
    }
    if (payload.length === 0) return;
    if (this.closed) {
      if (this.onData !== null) this.stats.overCap++;
      return;
    }
    // A capture that starts mid-connection: the first data seen defines the start.
    if (this.next === undefined) this.next = seq;
    const diff = (seq - this.next) | 0;
    if (diff + payload.length <= 0) {
      this.stats.retransmitted++;
      return;
    }
    if (diff > 0) {
      this.stats.outOfOrder++;
      this.hold(seq, payload, tsMicros);
      return;
    }
    if (diff < 0) {
      this.stats.overlaps++;
      payload = payload.subarray(-diff);
    }
    this.deliver(payload, tsMicros);
    this.drain();
  }

  /** End of input: whatever waits behind a hole is delivered after a gap. */
  flush(): void {
    while (this.pending.length > 0 && !this.closed) this.skipHole();
    this.pending = [];
    this.pendingBytes = 0;
  }

  private deliver(bytes: Uint8Array, ts: number): void {
    const room = this.cap - this.delivered;
    if (bytes.length > room) bytes = bytes.subarray(0, room);
    this.next = (this.next! + bytes.length) >>> 0;
    this.delivered += bytes.length;
    this.onData?.(bytes, ts);
    if (this.closed) {
      this.pending = [];
      this.pendingBytes = 0;
    }
  }

  private hold(seq: number, payload: Uint8Array, ts: number): void {
    // Sorted by distance from `next`; a segment identical in start to a held one keeps the first copy.
    const d = (seq - this.next!) | 0;
    let i = this.pending.length;
    while (i > 0 && ((this.pending[i - 1].seq - this.next!) | 0) > d) i--;
    if (i > 0 && this.pending[i - 1].seq === seq && this.pending[i - 1].data.length >= payload.length) {
      this.stats.retransmitted++;
      return;
    }
    this.pending.splice(i, 0, { seq, data: payload.slice(), ts });
    this.pendingBytes += payload.length;
    while (
      (this.pendingBytes > this.limits.maxPendingBytes ||
        this.pending.length > this.limits.maxPendingSegments) &&
      this.pending.length > 0 && !this.closed
    ) this.skipHole();
  }

  /** Gives up on the hole before the first held segment. */
  private skipHole(): void {
    const first = this.pending[0];
    const lost = (first.seq - this.next!) | 0;
    if (lost > 0) {
      this.stats.gaps++;
      this.stats.gapBytes += lost;
      this.next = first.seq;
      this.onGap?.(lost);
    }
    this.drain();
  }

  private drain(): void {
    while (this.pending.length > 0 && !this.closed) {
      const p = this.pending[0];
      const diff = (p.seq - this.next!) | 0;
      if (diff > 0) return;
      this.pending.shift();
      this.pendingBytes -= p.data.length;
      if (diff + p.data.length <= 0) {
        this.stats.retransmitted++;
        continue;
      }
      if (diff < 0) this.stats.overlaps++;
      this.deliver(diff < 0 ? p.data.subarray(-diff) : p.data, p.ts);
    }
  }
}

/** The fields of a SYN or SYN-ACK that JA4T/JA4TS/JA4L use. */
export interface SynFacts {
  window: number;
  ttl: number;
  /** Raw TCP option area, a copy. */
  options: Uint8Array;
  flags: number;
  tsMicros: number;
  frame: number;
}

/** JA4L marks, in µs since the epoch (spec §6.1): A SYN, B SYN-ACK, C client ACK, D/E/F first payloads. */
export interface HandshakeTimes {
  a?: number;
  b?: number;
  c?: number;
  d?: number;
  e?: number;
  f?: number;
  /** TTL of the client's SYN and of the server's SYN-ACK. */
  clientTtl?: number;
  serverTtl?: number;
}

export interface Endpoint {
  addr: string;
  port: number;
}

/** One TCP connection, identified like Wireshark's tcp.stream. */
export class TcpConnection {
  /** Endpoint that sent the first packet seen; `b` is the other one. */
  readonly a: Endpoint;
  readonly b: Endpoint;
  /** Which endpoint is the client: from the SYN or SYN-ACK when seen, else set by the consumer (or a guess). */
  clientIsA: boolean | undefined;
  /** How the roles were decided. */
  roleFrom: "syn" | "syn-ack" | "payload" | "first-packet" = "first-packet";
  syn: SynFacts | undefined;
  synAck: SynFacts | undefined;
  /** Number of SYNs / SYN-ACKs seen (retransmissions included). */
  synCount = 0;
  synAckCount = 0;
  readonly times: HandshakeTimes = {};
  readonly fromA: TcpDirection;
  readonly fromB: TcpDirection;
  finFromA = false;
  finFromB = false;
  rst = false;
  packets = 0;
  firstFrame: number;
  lastFrame: number;
  lastSeen: number;
  /** First sequence number seen from each side (Wireshark's base_seq; port-reuse detection). */
  baseSeqA: number | undefined;
  baseSeqB: number | undefined;
  /** For the consumer's own state. */
  user: unknown;
  /** onClose has run: the connection is only kept so later packets of it get the same stream number. */
  finalized = false;

  constructor(
    readonly stream: number,
    first: TcpSegment,
    frame: number,
    ts: number,
    limits: ReassemblyLimits,
  ) {
    this.a = { addr: first.src, port: first.srcPort };
    this.b = { addr: first.dst, port: first.dstPort };
    this.fromA = new TcpDirection(limits);
    this.fromB = new TcpDirection(limits);
    this.firstFrame = frame;
    this.lastFrame = frame;
    this.lastSeen = ts;
  }

  get client(): Endpoint {
    return this.clientIsA === false ? this.b : this.a;
  }

  get server(): Endpoint {
    return this.clientIsA === false ? this.a : this.b;
  }

  /** Client → server bytes. */
  get toServer(): TcpDirection {
    return this.clientIsA === false ? this.fromB : this.fromA;
  }

  /** Server → client bytes. */
  get toClient(): TcpDirection {
    return this.clientIsA === false ? this.fromA : this.fromB;
  }

  get closed(): boolean {
    return this.rst || (this.finFromA && this.finFromB);
  }

  /** Lets the consumer fix the roles from payload (e.g. the side that sent a ClientHello is the client). */
  setClient(isA: boolean): void {
    if (this.roleFrom === "syn" || this.roleFrom === "syn-ack") return;
    this.clientIsA = isA;
    this.roleFrom = "payload";
  }

  /** Updates state for one segment; `fromA` says which side sent it. */
  update(seg: TcpSegment, fromA: boolean, ts: number, frame: number): void {
    this.packets++;
    this.lastFrame = frame;
    this.lastSeen = ts;
    const f = seg.flags;
    const syn = (f & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    const synAck = (f & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK);
    if (fromA) {
      if (this.baseSeqA === undefined) this.baseSeqA = seg.seq;
    } else if (this.baseSeqB === undefined) this.baseSeqB = seg.seq;
    if (syn) {
      this.synCount++;
      if (!this.syn) {
        this.syn = facts(seg, ts, frame);
        if (this.roleFrom !== "syn") {
          this.clientIsA = fromA;
          this.roleFrom = "syn";
        }
        this.times.a = ts;
        this.times.clientTtl = seg.ttl;
      }
    } else if (synAck) {
      this.synAckCount++;
      if (!this.synAck) {
        this.synAck = facts(seg, ts, frame);
        if (this.roleFrom !== "syn") {
          this.clientIsA = !fromA;
          this.roleFrom = "syn-ack";
        }
        this.times.b = ts;
        this.times.serverTtl = seg.ttl;
      }
    }
    const fromClient = this.clientIsA === undefined ? undefined : fromA === this.clientIsA;
    const t = this.times;
    if (t.b !== undefined && fromClient !== undefined) {
      // C: the client's first ACK without SYN after the SYN-ACK (client only: spec §6.2).
      if (t.c === undefined && fromClient && !(f & TCP_SYN) && f & TCP_ACK) t.c = ts;
      if (seg.payload.length > 0) {
        if (fromClient) {
          if (t.d === undefined) t.d = ts;
          else if (t.e !== undefined && t.f === undefined) t.f = ts;
        } else if (t.d !== undefined && t.e === undefined) t.e = ts;
      }
    }
    if (f & TCP_RST) this.rst = true;
    (fromA ? this.fromA : this.fromB).push(seg.seq, f, seg.payload, ts);
    if (f & TCP_FIN) {
      if (fromA) this.finFromA = true;
      else this.finFromB = true;
    }
  }
}

function facts(seg: TcpSegment, ts: number, frame: number): SynFacts {
  return {
    window: seg.window,
    ttl: seg.ttl,
    options: seg.options.slice(),
    flags: seg.flags,
    tsMicros: ts,
    frame,
  };
}

/** What is left of a connection after onClose: enough to give its late packets the same stream number. */
export interface ClosedConnection {
  readonly stream: number;
  readonly finalized: true;
  a: Endpoint;
  baseSeqA: number | undefined;
  baseSeqB: number | undefined;
  lastSeen: number;
}

/**
 * All connections of a capture. Stream numbers follow Wireshark's tcp.stream: a new number for each new
 * address/port pair, and again when a SYN reuses the pair with a different sequence number than the first
 * one seen in that direction (port reuse).
 */
export class TcpConnectionTable {
  private byKey = new Map<string, TcpConnection | ClosedConnection>();
  private nextStream = 0;
  /** Called when a connection is created, before its first segment is processed (attach consumers here). */
  onOpen: ((c: TcpConnection) => void) | null = null;
  /**
   * Called once per connection: when it closes (FIN both ways, or RST), or else when it leaves the table
   * (replaced by port reuse, evicted, or at finish()). A closed connection stays in the table for
   * `closedMicros` so that its late packets keep its stream number.
   */
  onClose: ((c: TcpConnection) => void) | null = null;

  constructor(private limits: ReassemblyLimits = DEFAULT_LIMITS) {}

  /** Uses up a stream number, as Wireshark does when a dissector opens a conversation for a tunnel. */
  reserveStream(): number {
    return this.nextStream++;
  }

  get size(): number {
    return this.byKey.size;
  }

  /**
   * Processes one decoded segment and returns its connection (or, for a late packet of a closed one, the
   * small record left of it).
   */
  handle(seg: TcpSegment, tsMicros: number, frame: number): TcpConnection | ClosedConnection {
    const key = flowKey(seg.src, seg.srcPort, seg.dst, seg.dstPort);
    let c = this.byKey.get(key);
    if (c && !seg.icmpError) {
      const fromA = c.a.port === seg.srcPort && c.a.addr === seg.src;
      const base = fromA ? c.baseSeqA : c.baseSeqB;
      if ((seg.flags & (TCP_SYN | TCP_ACK)) === TCP_SYN && base !== undefined && base !== seg.seq) {
        this.byKey.delete(key);
        if (c instanceof TcpConnection) this.close(c);
        c = undefined;
      } else if (!(c instanceof TcpConnection)) {
        // A closed connection's straggler: keep its number, note the side's first sequence number.
        if (fromA) c.baseSeqA ??= seg.seq;
        else c.baseSeqB ??= seg.seq;
        c.lastSeen = tsMicros;
        return c;
      }
    }
    if (!c) {
      c = new TcpConnection(this.nextStream++, seg, frame, tsMicros, this.limits);
      this.byKey.set(key, c);
      this.onOpen?.(c);
    }
    if (seg.icmpError || !(c instanceof TcpConnection)) return c;
    c.update(seg, c.a.port === seg.srcPort && c.a.addr === seg.src, tsMicros, frame);
    if (c.closed && !c.finalized) {
      this.close(c);
      // Keep only what stream numbering needs; the connection's state can be collected.
      this.byKey.set(key, {
        stream: c.stream,
        finalized: true,
        a: c.a,
        baseSeqA: c.baseSeqA,
        baseSeqB: c.baseSeqB,
        lastSeen: c.lastSeen,
      });
    }
    return c;
  }

  /**
   * Drops connections closed for more than `closedMicros`, or idle for more than `idleMicros`, of capture
   * time, so long captures keep bounded state. A later packet of an evicted pair starts a new stream.
   */
  evict(nowMicros: number, closedMicros = 120e6, idleMicros = 600e6): void {
    for (const [k, c] of this.byKey) {
      const age = nowMicros - c.lastSeen;
      const closed = !(c instanceof TcpConnection) || c.closed;
      if ((closed && age > closedMicros) || age > idleMicros) {
        this.byKey.delete(k);
        if (c instanceof TcpConnection) this.close(c);
      }
    }
  }

  /** End of input: flushes and closes every remaining connection. */
  finish(): void {
    for (const c of this.byKey.values()) if (c instanceof TcpConnection) this.close(c);
    this.byKey.clear();
  }

  private close(c: TcpConnection): void {
    if (c.finalized) return;
    c.finalized = true;
    c.fromA.flush();
    c.fromB.flush();
    this.onClose?.(c);
  }
}

function flowKey(s: string, sp: number, d: string, dp: number): string {
  return s < d || (s === d && sp < dp) ? `${s} ${sp} ${d} ${dp}` : `${d} ${dp} ${s} ${sp}`;
}
