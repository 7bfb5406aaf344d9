/**
 * Raw ring-buffer records → typed events. Every offset comes from layout.gen.ts (generated from the BPF
 * object's BTF): nothing here knows a byte position by heart. Malformed records are typed errors.
 */
import { formatIPv4, formatIPv6 } from "../parse/addr.ts";
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
  SYN_EVENT,
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
}

export interface SynEvent extends EventHeader {
  type: "syn";
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

export type CaptureEvent = DataEvent | SynEvent | PacketEvent | CloseEvent;

export class EventDecodeError extends Error {
  constructor(message: string, readonly reason: "short" | "kind" | "length") {
    super(message);
    this.name = "EventDecodeError";
  }
}

type Reader = (dv: DataView) => number;

/**
 * One reader per field, chosen once from its layout kind (the per-record decode then does no switch).
 * u64/s64 are combined from two 32-bit halves: hi·2³² and lo are exact doubles, so their sum rounds once,
 * exactly as Number(bigint) does, without allocating a BigInt.
 */
function reader(f: FieldLayout): Reader {
  const o = f.offset;
  switch (f.kind) {
    case "u8":
      return (dv) => dv.getUint8(o);
    case "s8":
      return (dv) => dv.getInt8(o);
    case "u16":
      return (dv) => dv.getUint16(o, true);
    case "s16":
      return (dv) => dv.getInt16(o, true);
    case "u32":
      return (dv) => dv.getUint32(o, true);
    case "s32":
      return (dv) => dv.getInt32(o, true);
    case "u64":
      return (dv) => dv.getUint32(o + 4, true) * 4294967296 + dv.getUint32(o, true);
    case "s64":
      return (dv) => dv.getInt32(o + 4, true) * 4294967296 + dv.getUint32(o, true);
    default:
      return () => {
        throw new EventDecodeError(`field at ${o} is not a number`, "kind");
      };
  }
}

const dec = new TextDecoder();

/** Socket addresses: IPv4-mapped IPv6 (a dual-stack listener's IPv4 clients) as plain IPv4. */
export function formatIpv4(b: Uint8Array): string {
  return formatIPv4(b);
}

export function formatIpv6(b: Uint8Array): string {
  return formatIPv6(b, 0, "v4");
}

const H = EVENT_HDR.fields;
const rKind = reader(H.kind), rHook = reader(H.hook), rFamily = reader(H.family), rFlags = reader(H.flags);
const rPid = reader(H.pid), rTid = reader(H.tid), rFd = reader(H.fd);
const rSport = reader(H.sport), rDport = reader(H.dport);
const rDataLen = reader(H.data_len), rTotal = reader(H.total), rOffset = reader(H.offset);
const DF = DATA_EVENT.fields, SF = SYN_EVENT.fields, PF = PKT_EVENT.fields, CF = CLOSE_EVENT.fields;
const rDataPos = reader(DF.pos);
const rSynSeq = reader(SF.seq), rSynWindow = reader(SF.window), rSynTtl = reader(SF.ttl);
const rSynIpLen = reader(SF.ip_len), rSynIpFlags = reader(SF.ip_flags), rSynTcpFlags = reader(SF.tcp_flags);
const rSynOptLen = reader(SF.opt_len);
const rPktSeq = reader(PF.seq);
const rPosRaw = reader(CF.pos_raw), rPosPlaintext = reader(CF.pos_plaintext);

/** The process name: NUL-terminated, nearly always ASCII (decoded without a TextDecoder call then). */
function commOf(rec: Uint8Array): string {
  const from = H.comm.offset, to = from + H.comm.size;
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

function addrOf(rec: Uint8Array, family: number, f: FieldLayout): string {
  if (family === Family.INET) return formatIpv4(rec.subarray(f.offset, f.offset + f.size));
  if (family === Family.INET6) return formatIpv6(rec.subarray(f.offset, f.offset + f.size));
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

/**
 * Decodes one record (a copy from the reader; payloads are views into it). Throws EventDecodeError on a
 * short record, an unknown kind, or a length that runs past the record.
 *
 * Each kind is built as one object literal (header fields first, in EventHeader order): no intermediate
 * header object and no spread on this per-event path.
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
      need(rec, DF.data.offset, "data");
      const dataLen = rDataLen(dv);
      return {
        type: "data",
        hook: HOOK_METHOD[rHook(dv)] ?? "unknown",
        pid: rPid(dv),
        tid: rTid(dv),
        fd: rFd(dv),
        comm: commOf(rec),
        tsNs: dv.getBigUint64(H.ts_ns.offset, true),
        family: familyName(family),
        srcAddr: addrOf(rec, family, H.saddr),
        srcPort: rSport(dv),
        dstAddr: addrOf(rec, family, H.daddr),
        dstPort: rDport(dv),
        total: rTotal(dv),
        offset: rOffset(dv),
        truncated: (flags & EventFlags.TRUNCATED) !== 0,
        flags,
        pos: rDataPos(dv),
        bytes: payload(rec, DF.data, dataLen, "data"),
        plaintext: (flags & EventFlags.PLAINTEXT) !== 0,
        lastChunk: (flags & EventFlags.LAST_CHUNK) !== 0,
        readFailed: (flags & EventFlags.READ_FAILED) !== 0,
      };
    }
    case EventKind.SYN: {
      need(rec, SYN_EVENT.size, "syn");
      const optLen = Math.min(rSynOptLen(dv), SF.options.size);
      return {
        type: "syn",
        hook: HOOK_METHOD[rHook(dv)] ?? "unknown",
        pid: rPid(dv),
        tid: rTid(dv),
        fd: rFd(dv),
        comm: commOf(rec),
        tsNs: dv.getBigUint64(H.ts_ns.offset, true),
        family: familyName(family),
        srcAddr: addrOf(rec, family, H.saddr),
        srcPort: rSport(dv),
        dstAddr: addrOf(rec, family, H.daddr),
        dstPort: rDport(dv),
        total: rTotal(dv),
        offset: rOffset(dv),
        truncated: (flags & EventFlags.TRUNCATED) !== 0,
        flags,
        seq: rSynSeq(dv),
        window: rSynWindow(dv),
        ttl: rSynTtl(dv),
        ipLen: rSynIpLen(dv),
        ipFlags: rSynIpFlags(dv),
        tcpFlags: rSynTcpFlags(dv),
        options: rec.subarray(SF.options.offset, SF.options.offset + optLen),
      };
    }
    case EventKind.PKT: {
      need(rec, PF.data.offset, "pkt");
      const dataLen = rDataLen(dv);
      return {
        type: "pkt",
        hook: HOOK_METHOD[rHook(dv)] ?? "unknown",
        pid: rPid(dv),
        tid: rTid(dv),
        fd: rFd(dv),
        comm: commOf(rec),
        tsNs: dv.getBigUint64(H.ts_ns.offset, true),
        family: familyName(family),
        srcAddr: addrOf(rec, family, H.saddr),
        srcPort: rSport(dv),
        dstAddr: addrOf(rec, family, H.daddr),
        dstPort: rDport(dv),
        total: rTotal(dv),
        offset: rOffset(dv),
        truncated: (flags & EventFlags.TRUNCATED) !== 0,
        flags,
        seq: rPktSeq(dv),
        bytes: payload(rec, PF.data, dataLen, "pkt"),
      };
    }
    case EventKind.CLOSE: {
      need(rec, CLOSE_EVENT.size, "close");
      return {
        type: "close",
        hook: HOOK_METHOD[rHook(dv)] ?? "unknown",
        pid: rPid(dv),
        tid: rTid(dv),
        fd: rFd(dv),
        comm: commOf(rec),
        tsNs: dv.getBigUint64(H.ts_ns.offset, true),
        family: familyName(family),
        srcAddr: addrOf(rec, family, H.saddr),
        srcPort: rSport(dv),
        dstAddr: addrOf(rec, family, H.daddr),
        dstPort: rDport(dv),
        total: rTotal(dv),
        offset: rOffset(dv),
        truncated: (flags & EventFlags.TRUNCATED) !== 0,
        flags,
        posRaw: rPosRaw(dv),
        posPlaintext: rPosPlaintext(dv),
      };
    }
    default:
      throw new EventDecodeError(`unknown event kind ${kind}`, "kind");
  }
}

/** decodeEvent with malformed records counted instead of thrown (the reader's onRecord uses this). */
export class EventDecoder {
  readonly malformed: Record<EventDecodeError["reason"], number> = { short: 0, kind: 0, length: 0 };
  decode(rec: Uint8Array): CaptureEvent | undefined {
    try {
      return decodeEvent(rec);
    } catch (e) {
      if (e instanceof EventDecodeError) {
        this.malformed[e.reason]++;
        return undefined;
      }
      throw e;
    }
  }
}
