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

function num(dv: DataView, base: number, f: FieldLayout): number {
  const o = base + f.offset;
  switch (f.kind) {
    case "u8":
      return dv.getUint8(o);
    case "s8":
      return dv.getInt8(o);
    case "u16":
      return dv.getUint16(o, true);
    case "s16":
      return dv.getInt16(o, true);
    case "u32":
      return dv.getUint32(o, true);
    case "s32":
      return dv.getInt32(o, true);
    case "u64":
      return Number(dv.getBigUint64(o, true));
    case "s64":
      return Number(dv.getBigInt64(o, true));
    default:
      throw new EventDecodeError(`field at ${f.offset} is not a number`, "kind");
  }
}

function bytesOf(rec: Uint8Array, f: FieldLayout): Uint8Array {
  return rec.subarray(f.offset, f.offset + f.size);
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

function header(rec: Uint8Array, dv: DataView): EventHeader & { dataLen: number; kind: number } {
  const family = num(dv, 0, H.family);
  const flags = num(dv, 0, H.flags);
  const saddr = bytesOf(rec, H.saddr), daddr = bytesOf(rec, H.daddr);
  const fmt = family === Family.INET ? formatIpv4 : family === Family.INET6 ? formatIpv6 : () => "";
  const comm = bytesOf(rec, H.comm);
  const nul = comm.indexOf(0);
  return {
    kind: num(dv, 0, H.kind),
    hook: HOOK_METHOD[num(dv, 0, H.hook)] ?? "unknown",
    pid: num(dv, 0, H.pid),
    tid: num(dv, 0, H.tid),
    fd: num(dv, 0, H.fd),
    comm: dec.decode(nul < 0 ? comm : comm.subarray(0, nul)),
    tsNs: dv.getBigUint64(H.ts_ns.offset, true),
    family: family === Family.INET ? "ipv4" : family === Family.INET6 ? "ipv6" : "unknown",
    srcAddr: fmt(saddr),
    srcPort: num(dv, 0, H.sport),
    dstAddr: fmt(daddr),
    dstPort: num(dv, 0, H.dport),
    dataLen: num(dv, 0, H.data_len),
    total: num(dv, 0, H.total),
    offset: num(dv, 0, H.offset),
    truncated: (flags & EventFlags.TRUNCATED) !== 0,
    flags,
  };
}

function payload(rec: Uint8Array, at: FieldLayout, len: number, what: string): Uint8Array {
  if (at.offset + len > rec.length) {
    throw new EventDecodeError(`${what}: data_len ${len} runs past the ${rec.length}-byte record`, "length");
  }
  return rec.subarray(at.offset, at.offset + len);
}

/**
 * Decodes one record (a copy from the reader; payloads are views into it). Throws EventDecodeError on a
 * short record, an unknown kind, or a length that runs past the record.
 */
export function decodeEvent(rec: Uint8Array): CaptureEvent {
  if (rec.length < EVENT_HDR.size) {
    throw new EventDecodeError(
      `record of ${rec.length} bytes is shorter than the ${EVENT_HDR.size}-byte header`,
      "short",
    );
  }
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const { dataLen, kind, ...h } = header(rec, dv);
  const need = (min: number, what: string) => {
    if (rec.length < min) {
      throw new EventDecodeError(`${what} record of ${rec.length} bytes < ${min}`, "short");
    }
  };
  switch (kind) {
    case EventKind.DATA: {
      const f = DATA_EVENT.fields;
      need(f.data.offset, "data");
      return {
        type: "data",
        ...h,
        pos: num(dv, 0, f.pos),
        bytes: payload(rec, f.data, dataLen, "data"),
        plaintext: (h.flags & EventFlags.PLAINTEXT) !== 0,
        lastChunk: (h.flags & EventFlags.LAST_CHUNK) !== 0,
        readFailed: (h.flags & EventFlags.READ_FAILED) !== 0,
      };
    }
    case EventKind.SYN: {
      const f = SYN_EVENT.fields;
      need(SYN_EVENT.size, "syn");
      const optLen = Math.min(num(dv, 0, f.opt_len), f.options.size);
      return {
        type: "syn",
        ...h,
        seq: num(dv, 0, f.seq),
        window: num(dv, 0, f.window),
        ttl: num(dv, 0, f.ttl),
        ipLen: num(dv, 0, f.ip_len),
        ipFlags: num(dv, 0, f.ip_flags),
        tcpFlags: num(dv, 0, f.tcp_flags),
        options: rec.subarray(f.options.offset, f.options.offset + optLen),
      };
    }
    case EventKind.PKT: {
      const f = PKT_EVENT.fields;
      need(f.data.offset, "pkt");
      return { type: "pkt", ...h, seq: num(dv, 0, f.seq), bytes: payload(rec, f.data, dataLen, "pkt") };
    }
    case EventKind.CLOSE: {
      const f = CLOSE_EVENT.fields;
      need(CLOSE_EVENT.size, "close");
      return {
        type: "close",
        ...h,
        posRaw: num(dv, 0, f.pos_raw),
        posPlaintext: num(dv, 0, f.pos_plaintext),
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
