/**
 * Raw ring-buffer records → typed events. Every offset comes from layout.gen.ts (generated from the BPF
 * object's BTF): nothing here knows a byte position by heart. Malformed records are typed errors.
 */
import { formatIPv4, formatIPv6 } from "../parse/addr.ts";
import { be16 } from "../parse/bytes.ts";
import { type ConnKey, textKey, v4Key, v6KeyAt } from "../capture/connkey.ts";
import {
  CLOSE_EVENT,
  DATA_EVENT,
  EVENT_HDR,
  EventFlags,
  EventKind,
  Family,
  type FieldLayout,
  Hook,
  PKT_EVENT,
  SYN_FACTS,
} from "./layout.gen.ts";

/** The capture method behind an event, from its hook id. */
export type HookMethod =
  | "none"
  | "tracepoint"
  | "kretprobe"
  | "fexit"
  | "raw_tp"
  | "tp_btf"
  | "uprobe"
  | "read_tracepoint"
  | "readv_tracepoint"
  | "ssl_read"
  | "ssl_read_ex"
  | "tc"
  | "close_tracepoint"
  | "unknown";

const HOOK_METHOD: Record<number, HookMethod> = {
  [Hook.NONE]: "none",
  [Hook.TP_RECVFROM]: "tracepoint",
  [Hook.KSYSCALL_RECVFROM]: "kretprobe",
  [Hook.FEXIT_RECVFROM]: "fexit",
  [Hook.RAW_TP]: "raw_tp",
  [Hook.TP_BTF]: "tp_btf",
  [Hook.APR_RECV]: "uprobe",
  [Hook.TP_READ]: "read_tracepoint",
  [Hook.TP_READV]: "readv_tracepoint",
  [Hook.SSL_READ]: "ssl_read",
  [Hook.SSL_READ_EX]: "ssl_read_ex",
  [Hook.TC]: "tc",
  [Hook.TP_CLOSE]: "close_tracepoint",
};

/** Hook id → method name (for metrics labels). */
export const HOOK_METHODS: Readonly<Record<number, HookMethod>> = HOOK_METHOD;

export interface EventHeader {
  hook: HookMethod;
  pid: number;
  tid: number;
  fd: number;
  comm: string;
  /** CLOCK_MONOTONIC ns. */
  tsNs: bigint;
  family: "ipv4" | "ipv6" | "unknown";
  /** Client side (the peer of the server's socket) and server side, as strings; "" without a tuple. */
  srcAddr: string;
  srcPort: number;
  dstAddr: string;
  dstPort: number;
  /** Bytes of the whole call/segment, and the offset of `bytes[0]` within them. */
  total: number;
  offset: number;
  /** The call read more than was captured. */
  truncated: boolean;
  flags: number;
}

export interface DataEvent extends EventHeader {
  type: "data";
  /** Position of bytes[0] in the connection's stream. */
  pos: number;
  bytes: Uint8Array;
  /** Decrypted TLS bytes (SSL_read), a separate stream of the connection. */
  plaintext: boolean;
  lastChunk: boolean;
  readFailed: boolean;
  /** The connection's client SYN as tc saw it: on the first chunk of a stream's first read (JA4_F_SYN). */
  syn?: SynFacts;
}

/** A client SYN (JA4T inputs). */
export interface SynFacts {
  /** CLOCK_MONOTONIC ns when tc saw it. */
  tsNs: bigint;
  seq: number;
  window: number;
  ttl: number;
  ipLen: number;
  ipFlags: number;
  tcpFlags: number;
  /** Raw TCP options. */
  options: Uint8Array;
}

export interface PacketEvent extends EventHeader {
  type: "pkt";
  seq: number;
  bytes: Uint8Array;
}

export interface CloseEvent extends EventHeader {
  type: "close";
  posRaw: number;
  posPlaintext: number;
}

export type CaptureEvent = DataEvent | PacketEvent | CloseEvent;

export class EventDecodeError extends Error {
  constructor(message: string, readonly reason: "short" | "kind" | "length") {
    super(message);
    this.name = "EventDecodeError";
  }
}

/** A field of the record at `b` (default 0) of the view. */
type Reader = (dv: DataView, b?: number) => number;

/**
 * One reader per field, chosen once from its layout kind (the per-record decode then does no switch).
 * u64/s64 are combined from two 32-bit halves: hi·2³² and lo are exact doubles, so their sum rounds once,
 * exactly as Number(bigint) does, without allocating a BigInt. A u64 below 2³² is `lo` itself: in optimized
 * code the product-and-sum is a float even when it is a small integer, and stream positions that came as
 * small integers from one tier and boxed floats from another kept the request tracker's arithmetic in a
 * deoptimization loop (tests/jit_test.ts).
 */
function reader(f: FieldLayout): Reader {
  const o = f.offset;
  switch (f.kind) {
    case "u8":
      return (dv, b = 0) => dv.getUint8(b + o);
    case "s8":
      return (dv, b = 0) => dv.getInt8(b + o);
    case "u16":
      return (dv, b = 0) => dv.getUint16(b + o, true);
    case "s16":
      return (dv, b = 0) => dv.getInt16(b + o, true);
    case "u32":
      return (dv, b = 0) => dv.getUint32(b + o, true);
    case "s32":
      return (dv, b = 0) => dv.getInt32(b + o, true);
    case "u64":
      return (dv, b = 0) => {
        const hi = dv.getUint32(b + o + 4, true), lo = dv.getUint32(b + o, true);
        return hi === 0 ? lo : hi * 4294967296 + lo;
      };
    case "s64":
      return (dv, b = 0) => {
        const hi = dv.getInt32(b + o + 4, true), lo = dv.getUint32(b + o, true);
        return hi === 0 ? lo : hi * 4294967296 + lo;
      };
    default:
      return () => {
        throw new EventDecodeError(`field at ${o} is not a number`, "kind");
      };
  }
}

const dec = new TextDecoder();

const HDR_F = EVENT_HDR.fields;
const rKind = reader(HDR_F.kind),
  rHook = reader(HDR_F.hook),
  rFamily = reader(HDR_F.family),
  rFlags = reader(HDR_F.flags);
const rPid = reader(HDR_F.pid), rTid = reader(HDR_F.tid), rFd = reader(HDR_F.fd);
const rSport = reader(HDR_F.sport), rDport = reader(HDR_F.dport);
const rDataLen = reader(HDR_F.data_len), rTotal = reader(HDR_F.total), rOffset = reader(HDR_F.offset);
const DATA_F = DATA_EVENT.fields,
  PKT_F = PKT_EVENT.fields,
  CLOSE_F = CLOSE_EVENT.fields;
const rDataPos = reader(DATA_F.pos);
/** A field of the SYN facts inside a data event (their offsets are relative to the nested struct). */
const synField = (f: FieldLayout): FieldLayout => ({ ...f, offset: DATA_F.syn.offset + f.offset });
const SYN_F = SYN_FACTS.fields;
const rSynSeq = reader(synField(SYN_F.seq)),
  rSynWindow = reader(synField(SYN_F.window)),
  rSynTtl = reader(synField(SYN_F.ttl));
const rSynIpLen = reader(synField(SYN_F.ip_len)),
  rSynIpFlags = reader(synField(SYN_F.ip_flags)),
  rSynTcpFlags = reader(synField(SYN_F.tcp_flags));
const rSynOptLen = reader(synField(SYN_F.opt_len)), rSynTs = reader(synField(SYN_F.ts_ns));
const SYN_OPTIONS_AT = DATA_F.syn.offset + SYN_F.options.offset;
const rPktSeq = reader(PKT_F.seq);
const rPosRaw = reader(CLOSE_F.pos_raw), rPosPlaintext = reader(CLOSE_F.pos_plaintext);

/** The process name: NUL-terminated, nearly always ASCII (decoded without a TextDecoder call then). */
function commOf(rec: Uint8Array, b = 0): string {
  const from = b + HDR_F.comm.offset, to = from + HDR_F.comm.size;
  let s = "";
  for (let i = from; i < to; i++) {
    const c = rec[i];
    if (c === 0) return s;
    if (c >= 0x80) {
      const comm = rec.subarray(from, to);
      const nul = comm.indexOf(0);
      return dec.decode(nul < 0 ? comm : comm.subarray(0, nul));
    }
    s += String.fromCharCode(c);
  }
  return s;
}

/** Socket addresses; an IPv4-mapped IPv6 one (a dual-stack listener's IPv4 client) as plain IPv4. */
function addrOf(rec: Uint8Array, family: number, f: FieldLayout): string {
  if (family === Family.INET) return formatIPv4(rec, f.offset);
  if (family === Family.INET6) return formatIPv6(rec, f.offset, "v4");
  return "";
}

function familyName(family: number): EventHeader["family"] {
  return family === Family.INET ? "ipv4" : family === Family.INET6 ? "ipv6" : "unknown";
}

function payload(rec: Uint8Array, at: FieldLayout, len: number, what: string): Uint8Array {
  if (at.offset + len > rec.length) {
    throw new EventDecodeError(`${what}: data_len ${len} runs past the ${rec.length}-byte record`, "length");
  }
  return rec.subarray(at.offset, at.offset + len);
}

function need(rec: Uint8Array, min: number, what: string): void {
  if (rec.length < min) {
    throw new EventDecodeError(`${what} record of ${rec.length} bytes < ${min}`, "short");
  }
}

/** The header fields every event kind shares. */
function header(rec: Uint8Array, dv: DataView, family: number, flags: number): EventHeader {
  return {
    hook: HOOK_METHOD[rHook(dv)] ?? "unknown",
    pid: rPid(dv),
    tid: rTid(dv),
    fd: rFd(dv),
    comm: commOf(rec),
    tsNs: dv.getBigUint64(HDR_F.ts_ns.offset, true),
    family: familyName(family),
    srcAddr: addrOf(rec, family, HDR_F.saddr),
    srcPort: rSport(dv),
    dstAddr: addrOf(rec, family, HDR_F.daddr),
    dstPort: rDport(dv),
    total: rTotal(dv),
    offset: rOffset(dv),
    truncated: (flags & EventFlags.TRUNCATED) !== 0,
    flags,
  };
}

/**
 * Decodes one record (a copy from the reader; payloads are views into it). Throws EventDecodeError on a
 * short record, an unknown kind, or a length that runs past the record.
 *
 * Tests and tools use this; the agent's per-event path is EventView, which allocates nothing.
 */
export function decodeEvent(rec: Uint8Array): CaptureEvent {
  if (rec.length < EVENT_HDR.size) {
    throw new EventDecodeError(
      `record of ${rec.length} bytes is shorter than the ${EVENT_HDR.size}-byte header`,
      "short",
    );
  }
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const kind = rKind(dv);
  const family = rFamily(dv);
  const flags = rFlags(dv);
  switch (kind) {
    case EventKind.DATA: {
      need(rec, DATA_F.data.offset, "data");
      const dataLen = rDataLen(dv);
      const ev: DataEvent = {
        type: "data",
        ...header(rec, dv, family, flags),
        pos: rDataPos(dv),
        bytes: payload(rec, DATA_F.data, dataLen, "data"),
        plaintext: (flags & EventFlags.PLAINTEXT) !== 0,
        lastChunk: (flags & EventFlags.LAST_CHUNK) !== 0,
        readFailed: (flags & EventFlags.READ_FAILED) !== 0,
      };
      if ((flags & EventFlags.SYN) !== 0) {
        const optLen = Math.min(rSynOptLen(dv), SYN_F.options.size);
        ev.syn = {
          tsNs: dv.getBigUint64(DATA_F.syn.offset + SYN_F.ts_ns.offset, true),
          seq: rSynSeq(dv),
          window: rSynWindow(dv),
          ttl: rSynTtl(dv),
          ipLen: rSynIpLen(dv),
          ipFlags: rSynIpFlags(dv),
          tcpFlags: rSynTcpFlags(dv),
          options: rec.subarray(SYN_OPTIONS_AT, SYN_OPTIONS_AT + optLen),
        };
      }
      return ev;
    }
    case EventKind.PKT: {
      need(rec, PKT_F.data.offset, "pkt");
      const dataLen = rDataLen(dv);
      return {
        type: "pkt",
        ...header(rec, dv, family, flags),
        seq: rPktSeq(dv),
        bytes: payload(rec, PKT_F.data, dataLen, "pkt"),
      };
    }
    case EventKind.CLOSE: {
      need(rec, CLOSE_EVENT.size, "close");
      return {
        type: "close",
        ...header(rec, dv, family, flags),
        posRaw: rPosRaw(dv),
        posPlaintext: rPosPlaintext(dv),
      };
    }
    default:
      throw new EventDecodeError(`unknown event kind ${kind}`, "kind");
  }
}

/**
 * The per-event path of the agent: one reusable view that `load()` fills from a record without allocating
 * (payloads are views into the record; addresses come from a small cache of their text). decodeEvent builds
 * a fresh object per record, which is right for tests and tools but costs an allocation and ~20 fields per
 * event; the agent reads each event once, synchronously, so one mutable view serves every record.
 *
 * Field names match RequestTracker's PayloadChunk and the Row's tuple fields (src, src_port, dst, dst_port),
 * so the view is passed on as it is.
 */
export class EventView {
  kind = 0;
  hookId = 0;
  flags = 0;
  family = 0;
  pid = 0;
  tid = 0;
  fd = 0;
  /** CLOCK_MONOTONIC ns as a double (exact below 2^53 ns, ~104 days of uptime; ~ns after). */
  tsNs = 0;
  src = "";
  src_port = 0;
  dst = "";
  dst_port = 0;
  total = 0;
  offset = 0;
  /** DATA: position of data[0] in its stream. CLOSE: raw and plaintext stream positions. */
  pos = 0;
  posRaw = 0;
  posPlaintext = 0;
  /** PKT: TCP sequence number; DATA with `hasSyn`: the SYN's, and its window. */
  seq = 0;
  window = 0;
  /** DATA/PKT payload: a view into the record. */
  data: Uint8Array = EMPTY;
  /** DATA: the record carries its connection's client SYN (window, seq, options, synTsNs). */
  hasSyn = false;
  /** With hasSyn: the SYN's TCP options (a view into the record) and when tc saw it (CLOCK_MONOTONIC ns). */
  options: Uint8Array = EMPTY;
  synTsNs = 0;
  plaintext = false;
  /** Set by the consumer before handing the view to the request tracker. */
  server = "";
  capture = "";
  /** DATA: the call read more than was copied: bytes [pos + data.length, lostTo) are missing; else undefined. */
  lostTo: number | undefined = undefined;
  #buf: Uint8Array = EMPTY;
  #base = 0;
  #connKey: ConnKey | undefined = undefined;
  readonly malformed: Record<EventDecodeError["reason"], number> = { short: 0, kind: 0, length: 0 };

  /** Fills the view from one record; false (counted in `malformed`) when the record is not well formed. */
  load(rec: Uint8Array): boolean {
    return this.loadAt(rec, new DataView(rec.buffer, rec.byteOffset, rec.byteLength), 0, rec.length);
  }

  /**
   * The same for the record of `len` bytes at `b` of `buf`, read through `dv` (a view of the same bytes as
   * `buf`): a ring reader passes its whole mapped area and one DataView made once, so nothing is allocated
   * per record but the payload's view.
   */
  loadAt(buf: Uint8Array, dv: DataView, b: number, len: number): boolean {
    if (len < EVENT_HDR.size) return this.#bad("short");
    this.#buf = buf;
    this.#base = b;
    const kind = rKind(dv, b), flags = rFlags(dv, b), family = rFamily(dv, b);
    this.kind = kind;
    this.flags = flags;
    this.family = family;
    this.hookId = rHook(dv, b);
    this.pid = rPid(dv, b);
    this.tid = rTid(dv, b);
    this.fd = rFd(dv, b);
    this.tsNs = rTs(dv, b);
    this.src = addrText(buf, family, b + HDR_F.saddr.offset);
    this.src_port = rSport(dv, b);
    this.dst = addrText(buf, family, b + HDR_F.daddr.offset);
    this.dst_port = rDport(dv, b);
    this.total = rTotal(dv, b);
    this.offset = rOffset(dv, b);
    this.plaintext = (flags & EventFlags.PLAINTEXT) !== 0;
    this.lostTo = undefined;
    this.#connKey = undefined;
    this.hasSyn = false;
    switch (kind) {
      case EventKind.DATA: {
        if (!this.#payload(buf, dv, b, len, DATA_F.data.offset)) return false;
        this.pos = rDataPos(dv, b);
        if ((flags & EventFlags.TRUNCATED) !== 0 && (flags & EventFlags.LAST_CHUNK) !== 0) {
          this.lostTo = this.pos - this.offset + this.total;
        }
        this.hasSyn = (flags & EventFlags.SYN) !== 0;
        if (this.hasSyn) {
          this.seq = rSynSeq(dv, b);
          this.window = rSynWindow(dv, b);
          this.synTsNs = rSynTs(dv, b);
          const n = Math.min(rSynOptLen(dv, b), SYN_F.options.size);
          this.options = buf.subarray(b + SYN_OPTIONS_AT, b + SYN_OPTIONS_AT + n);
        }
        return true;
      }
      case EventKind.PKT:
        if (!this.#payload(buf, dv, b, len, PKT_F.data.offset)) return false;
        this.seq = rPktSeq(dv, b);
        return true;
      case EventKind.CLOSE:
        if (len < CLOSE_EVENT.size) return this.#bad("short");
        this.posRaw = rPosRaw(dv, b);
        this.posPlaintext = rPosPlaintext(dv, b);
        return true;
      default:
        return this.#bad("kind");
    }
  }

  /**
   * The connection's key for the packet tracker's and the correlator's maps (src/capture/connkey.ts), made
   * once per event and shared by every lookup of it.
   */
  get connKey(): ConnKey {
    return this.#connKey ??= this.#key();
  }

  /** From the record's address bytes: IPv4 and IPv4-mapped IPv6 as numbers (src/capture/connkey.ts). */
  #key(): ConnKey {
    const s = v4At(this.#buf, this.family, this.#base + HDR_F.saddr.offset);
    const d = s < 0 ? -1 : v4At(this.#buf, this.family, this.#base + HDR_F.daddr.offset);
    if (d >= 0) {
      const k = v4Key(s, this.src_port, d, this.dst_port);
      if (k >= 0) return k;
    }
    if (s < 0 && this.family === Family.INET6) {
      // IPv6 (not mapped): the groups as they are on the wire, as connKeyOf reads them from text.
      const at = this.#base;
      return v6KeyAt(
        this.#buf,
        at + HDR_F.saddr.offset,
        this.src_port,
        at + HDR_F.daddr.offset,
        this.dst_port,
      );
    }
    return textKey(this.src, this.src_port, this.dst, this.dst_port);
  }

  /** PKT: the segment's payload (PacketTracker's name for it). */
  get bytes(): Uint8Array {
    return this.data;
  }

  /** The capture method behind the event. */
  get hook(): HookMethod {
    return HOOK_METHOD[this.hookId] ?? "unknown";
  }

  get readFailed(): boolean {
    return (this.flags & EventFlags.READ_FAILED) !== 0;
  }

  /** The process name (decoded on demand: most events never need it). */
  get comm(): string {
    return commOf(this.#buf, this.#base);
  }

  /** `data` = the data_len payload bytes at `at`; false (counted) when the record does not hold them. */
  #payload(buf: Uint8Array, dv: DataView, b: number, recLen: number, at: number): boolean {
    const len = rDataLen(dv, b);
    if (recLen < at) return this.#bad("short");
    if (at + len > recLen) return this.#bad("length");
    this.data = buf.subarray(b + at, b + at + len);
    return true;
  }

  #bad(reason: EventDecodeError["reason"]): false {
    this.malformed[reason]++;
    return false;
  }
}

const EMPTY = new Uint8Array(0);
const rTs = reader(HDR_F.ts_ns);

/** The IPv4 address at `o` (an IPv4-mapped IPv6 one too) as an unsigned number; -1 for other IPv6. */
function v4At(b: Uint8Array, family: number, o: number): number {
  if (family === Family.INET6) {
    if (
      b[o] | b[o + 1] | b[o + 2] | b[o + 3] | b[o + 4] | b[o + 5] | b[o + 6] | b[o + 7] | b[o + 8] |
        b[o + 9] ||
      (b[o + 10] & b[o + 11]) !== 0xff
    ) return -1;
    o += 12;
  } else if (family !== Family.INET) return -1;
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/**
 * Address text by value: a server sees the same few thousand client addresses again and again, so their
 * text is kept (bounded: the cache starts over when full) instead of formatted for every event.
 */
const V4_TEXT = new Map<number, string>();
const V6_TEXT = new Map<string, string>();
const ADDR_CACHE_MAX = 16384;

function addrText(rec: Uint8Array, family: number, o: number): string {
  if (family === Family.INET) {
    const k = v4At(rec, family, o);
    let s = V4_TEXT.get(k);
    if (s === undefined) {
      if (V4_TEXT.size >= ADDR_CACHE_MAX) V4_TEXT.clear();
      s = formatIPv4(rec, o);
      V4_TEXT.set(k, s);
    }
    return s;
  }
  if (family === Family.INET6) {
    // Key: the 16 bytes as 8 code units, made by one call (a flat string; concatenation made a cons string
    // that every lookup flattened).
    const k = String.fromCharCode(
      be16(rec, o),
      be16(rec, o + 2),
      be16(rec, o + 4),
      be16(rec, o + 6),
      be16(rec, o + 8),
      be16(rec, o + 10),
      be16(rec, o + 12),
      be16(rec, o + 14),
    );
    let s = V6_TEXT.get(k);
    if (s === undefined) {
      if (V6_TEXT.size >= ADDR_CACHE_MAX) V6_TEXT.clear();
      s = formatIPv6(rec, o, "v4");
      V6_TEXT.set(k, s);
    }
    return s;
  }
  return "";
}
