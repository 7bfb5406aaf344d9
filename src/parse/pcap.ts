/**
 * Streaming reader for capture files: classic pcap (both byte orders, µs and ns timestamps) and pcapng
 * (sections of either byte order, one link type and timestamp resolution per interface, EPB/SPB/OPB,
 * Decryption Secrets Blocks handed to `onDecryptionSecrets`, unknown blocks skipped). Reads through a fixed-size
 * window, so a capture of any size costs the same memory.
 */
import { be32, le32 } from "./bytes.ts";

/** The input is not a capture file, or its headers are inconsistent. */
export class CaptureFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CaptureFormatError";
  }
}

export interface CapturedPacket {
  /** 1-based position of the packet in the file (Wireshark's frame.number). */
  frame: number;
  /** LINKTYPE_* of the interface that captured it. */
  linkType: number;
  /** Whole seconds since the epoch. */
  tsSec: number;
  /** Nanoseconds within the second. */
  tsNsec: number;
  /** Bytes captured; a view that is only valid until the next call to next(). */
  data: Uint8Array;
  /** Length of the packet on the wire (may exceed data.length when the capture was snapped). */
  origLen: number;
}

/** What the reader needs from a file: Deno.FsFile fits. */
export interface ByteSource {
  readSync(p: Uint8Array): number | null;
}

export type CaptureFormat = "pcap" | "pcapng";

/** One pcapng Decryption Secrets Block (block type 0x0000000A). */
export interface DecryptionSecrets {
  /** e.g. 0x544c534b "TLSK" (an NSS key log), 0x57474b4c "WGKL". */
  secretsType: number;
  /** The secrets (a copy). */
  data: Uint8Array;
  /** Frames read before the block: the secrets apply to the packets that follow. */
  afterFrame: number;
}

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const NG_SHB = 0x0a0d0d0a;
const NG_BOM = 0x1a2b3c4d;
const NG_DSB = 0x0000000a;
/** Records above this are corrupt, not big: no link layer carries 256 MiB frames. */
const MAX_RECORD = 256 * 1024 * 1024;

function read32(b: Uint8Array, o: number, le: boolean): number {
  return le ? le32(b, o) : be32(b, o);
}

/** A read window over a ByteSource that can hand out contiguous views of up to MAX_RECORD bytes. */
class Window {
  private buf: Uint8Array;
  private start = 0;
  private end = 0;
  private eof = false;

  constructor(private src: ByteSource, size = 1 << 20) {
    this.buf = new Uint8Array(size);
  }

  /** Makes n bytes available at the read position; false when the input ends first. */
  ensure(n: number): boolean {
    while (this.end - this.start < n) {
      if (this.eof) return false;
      if (this.start + n > this.buf.length) {
        // Slide the unread tail to the front, growing the buffer for an unusually big record.
        if (n > this.buf.length) {
          const nb = new Uint8Array(Math.max(n, this.buf.length * 2));
          nb.set(this.buf.subarray(this.start, this.end));
          this.buf = nb;
        } else this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      }
      const r = this.src.readSync(this.buf.subarray(this.end));
      if (r === null || r === 0) {
        this.eof = true;
      } else this.end += r;
    }
    return true;
  }

  /** Unread bytes left in the window (only meaningful after ensure() failed). */
  get available(): number {
    return this.end - this.start;
  }

  peek(n: number): Uint8Array {
    return this.buf.subarray(this.start, this.start + n);
  }

  skip(n: number): void {
    this.start += n;
  }

  /** Skips n bytes that may not fit the window; false when the input ends first. */
  skipLong(n: number): boolean {
    while (n > 0) {
      const avail = this.end - this.start;
      if (avail >= n) {
        this.start += n;
        return true;
      }
      n -= avail;
      this.start = this.end;
      if (!this.ensure(Math.min(n, this.buf.length))) {
        const left = this.end - this.start;
        this.start = this.end;
        return left >= n;
      }
    }
    return true;
  }
}

interface NgInterface {
  linkType: number;
  /** Timestamp units per second, as a power: 10^exp or 2^exp. */
  base: 10 | 2;
  exp: number;
  /** if_tsoffset, seconds. */
  offset: number;
}

/**
 * Reads packets one at a time. `warnings` collects non-fatal trouble (a truncated last record, a corrupt
 * block that ended the read); a file that is not a capture makes the constructor throw CaptureFormatError.
 */
export class CaptureReader {
  readonly format: CaptureFormat;
  readonly warnings: string[] = [];
  /**
   * Called with each Decryption Secrets Block, before the packets that follow it are returned. Blocks read
   * while it is null are dropped (only counted in `decryptionSecretsBlocks`).
   */
  onDecryptionSecrets: ((s: DecryptionSecrets) => void) | null = null;
  /** Decryption Secrets Blocks seen so far. */
  decryptionSecretsBlocks = 0;
  /** Packets of link types the caller could not use are still counted here. */
  private frame = 0;
  private w: Window;
  private le = true;
  private nsec = false;
  private linkType = 0;
  private ifaces: NgInterface[] = [];
  private done = false;

  /** `windowBytes`: initial read window (default 1 MiB; it grows for a bigger record). */
  constructor(src: ByteSource, windowBytes = 1 << 20) {
    this.w = new Window(src, windowBytes);
    if (!this.w.ensure(4)) throw new CaptureFormatError("not a capture file: fewer than 4 bytes");
    const h = this.w.peek(4);
    const be = be32(h, 0);
    const le = le32(h, 0);
    if (be === NG_SHB) {
      this.format = "pcapng";
      this.readShb(true);
    } else if (be === PCAP_MAGIC_US || be === PCAP_MAGIC_NS || le === PCAP_MAGIC_US || le === PCAP_MAGIC_NS) {
      this.format = "pcap";
      this.le = le === PCAP_MAGIC_US || le === PCAP_MAGIC_NS;
      this.nsec = (this.le ? le : be) === PCAP_MAGIC_NS;
      if (!this.w.ensure(24)) throw new CaptureFormatError("pcap: file header truncated");
      const dv = this.view(24);
      const major = dv.getUint16(4, this.le);
      if (major !== 2) throw new CaptureFormatError(`pcap: unsupported version ${major}`);
      // The upper bits may carry FCS information; the link type is the low 16 bits.
      this.linkType = dv.getUint32(20, this.le) & 0xffff;
      this.w.skip(24);
    } else {
      throw new CaptureFormatError(
        `not a pcap or pcapng file (magic ${Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("")})`,
      );
    }
  }

  /** Link type of a classic pcap file (pcapng files carry one per interface). */
  get fileLinkType(): number | undefined {
    return this.format === "pcap" ? this.linkType : this.ifaces[0]?.linkType;
  }

  private view(n: number): DataView {
    const b = this.w.peek(n);
    return new DataView(b.buffer, b.byteOffset, n);
  }

  private stop(warning: string): null {
    this.warnings.push(warning);
    this.done = true;
    return null;
  }

  /** The next packet, or null at the end of the file. */
  next(): CapturedPacket | null {
    if (this.done) return null;
    return this.format === "pcap" ? this.nextPcap() : this.nextNg();
  }

  private nextPcap(): CapturedPacket | null {
    if (!this.w.ensure(16)) {
      if (this.w.available > 0) return this.stop(`truncated record header after frame ${this.frame}`);
      this.done = true;
      return null;
    }
    // Read in place: a DataView per record showed in the profile of big captures.
    const h = this.w.peek(16);
    const le = this.le;
    const sec = read32(h, 0, le);
    const frac = read32(h, 4, le);
    const incl = read32(h, 8, le);
    const orig = read32(h, 12, le);
    if (incl > MAX_RECORD) return this.stop(`corrupt record after frame ${this.frame}: length ${incl}`);
    this.w.skip(16);
    if (!this.w.ensure(incl)) {
      return this.stop(
        `truncated last record (frame ${this.frame + 1}: ${this.w.available} of ${incl} bytes)`,
      );
    }
    const data = this.w.peek(incl);
    this.w.skip(incl);
    return {
      frame: ++this.frame,
      linkType: this.linkType,
      tsSec: sec,
      tsNsec: this.nsec ? frac : frac * 1000,
      data,
      origLen: orig,
    };
  }

  /** Reads a Section Header Block at the read position and sets the byte order from it. */
  private readShb(first: boolean): void {
    if (!this.w.ensure(12)) {
      if (first) throw new CaptureFormatError("pcapng: section header truncated");
      this.stop("pcapng: truncated section header");
      return;
    }
    const b = this.w.peek(12);
    const bomLe = le32(b, 8);
    const bomBe = be32(b, 8);
    if (bomLe === NG_BOM) this.le = true;
    else if (bomBe === NG_BOM) this.le = false;
    else throw new CaptureFormatError("pcapng: bad byte-order magic in section header");
    const len = this.view(12).getUint32(4, this.le);
    if (len < 28 || len % 4 !== 0 || len > MAX_RECORD) {
      throw new CaptureFormatError(`pcapng: bad section header length ${len}`);
    }
    // A new section starts a new interface list.
    this.ifaces = [];
    if (!this.w.skipLong(len)) this.stop("pcapng: truncated section header");
  }

  private readIdb(body: DataView, bodyLen: number): void {
    const iface: NgInterface = { linkType: body.getUint16(0, this.le), base: 10, exp: 6, offset: 0 };
    // Options start after linktype(2) reserved(2) snaplen(4).
    let o = 8;
    while (o + 4 <= bodyLen) {
      const code = body.getUint16(o, this.le);
      const olen = body.getUint16(o + 2, this.le);
      if (code === 0) break;
      if (o + 4 + olen > bodyLen) break;
      if (code === 9 && olen >= 1) {
        const v = body.getUint8(o + 4);
        iface.base = v & 0x80 ? 2 : 10;
        iface.exp = v & 0x7f;
      } else if (code === 14 && olen >= 8) {
        iface.offset = Number(body.getBigInt64(o + 4, this.le));
      }
      o += 4 + ((olen + 3) & ~3);
    }
    this.ifaces.push(iface);
  }

  private timestamp(iface: NgInterface, hi: number, lo: number): [number, number] {
    if (iface.base === 10 && iface.exp === 6) {
      const us = hi * 4294967296 + lo; // < 2^53 for any real date
      const sec = Math.floor(us / 1e6);
      return [sec + iface.offset, (us - sec * 1e6) * 1000];
    }
    const units = (BigInt(hi) << 32n) | BigInt(lo);
    const per = iface.base === 10 ? 10n ** BigInt(iface.exp) : 1n << BigInt(iface.exp);
    const sec = units / per;
    const rem = units % per;
    return [Number(sec) + iface.offset, Number((rem * 1_000_000_000n) / per)];
  }

  private nextNg(): CapturedPacket | null {
    for (;;) {
      if (!this.w.ensure(12)) {
        if (this.w.available > 0) return this.stop(`truncated block header after frame ${this.frame}`);
        this.done = true;
        return null;
      }
      let dv = this.view(12);
      const type = dv.getUint32(0, this.le);
      if (type === NG_SHB) {
        this.readShb(false);
        if (this.done) return null;
        continue;
      }
      const len = dv.getUint32(4, this.le);
      if (len < 12 || len % 4 !== 0 || len > MAX_RECORD) {
        return this.stop(
          `corrupt block (type 0x${type.toString(16)}, length ${len}) after frame ${this.frame}`,
        );
      }
      if (type !== 1 && type !== 6 && type !== 3 && type !== 2 && type !== NG_DSB) {
        if (!this.w.skipLong(len)) return this.stop(`truncated last block (type 0x${type.toString(16)})`);
        continue;
      }
      if (!this.w.ensure(len)) {
        return this.stop(
          `truncated last block (frame ${this.frame + 1}: ${this.w.available} of ${len} bytes)`,
        );
      }
      dv = this.view(len);
      const bodyLen = len - 12;
      const body = new DataView(dv.buffer, dv.byteOffset + 8, bodyLen);
      const raw = this.w.peek(len);
      if (type === 1) {
        if (bodyLen >= 8) this.readIdb(body, bodyLen);
        this.w.skip(len);
        continue;
      }
      if (type === NG_DSB) {
        // secrets type(4) secrets length(4) data, padded to 32 bits; options after it are ignored.
        const dataLen = bodyLen >= 8 ? body.getUint32(4, this.le) : -1;
        if (dataLen < 0 || 8 + dataLen > bodyLen) {
          this.warnings.push(`malformed decryption secrets block after frame ${this.frame}`);
        } else {
          this.decryptionSecretsBlocks++;
          this.onDecryptionSecrets?.({
            secretsType: body.getUint32(0, this.le),
            data: raw.slice(16, 16 + dataLen),
            afterFrame: this.frame,
          });
        }
        this.w.skip(len);
        continue;
      }
      let ifId = 0, hi = 0, lo = 0, cap = 0, orig = 0, off = 0;
      if (type === 6 && bodyLen >= 20) {
        ifId = body.getUint32(0, this.le);
        hi = body.getUint32(4, this.le);
        lo = body.getUint32(8, this.le);
        cap = body.getUint32(12, this.le);
        orig = body.getUint32(16, this.le);
        off = 20;
      } else if (type === 2 && bodyLen >= 20) {
        ifId = body.getUint16(0, this.le);
        hi = body.getUint32(4, this.le);
        lo = body.getUint32(8, this.le);
        cap = body.getUint32(12, this.le);
        orig = body.getUint32(16, this.le);
        off = 20;
      } else if (type === 3 && bodyLen >= 4) {
        orig = body.getUint32(0, this.le);
        cap = Math.min(orig, bodyLen - 4);
        off = 4;
      } else {
        this.w.skip(len);
        this.warnings.push(`short packet block after frame ${this.frame}`);
        continue;
      }
      const iface = this.ifaces[ifId];
      if (!iface) {
        this.w.skip(len);
        return this.stop(`packet block names interface ${ifId}, which was not described`);
      }
      if (off + cap > bodyLen) cap = bodyLen - off;
      const [sec, nsec] = type === 3 ? [0, 0] : this.timestamp(iface, hi, lo);
      const data = raw.subarray(8 + off, 8 + off + cap);
      this.w.skip(len);
      return { frame: ++this.frame, linkType: iface.linkType, tsSec: sec, tsNsec: nsec, data, origLen: orig };
    }
  }
}

/** A ByteSource over bytes already in memory (tests, small inputs). */
export function bytesSource(bytes: Uint8Array): ByteSource {
  let pos = 0;
  return {
    readSync(p: Uint8Array): number | null {
      if (pos >= bytes.length) return null;
      const n = Math.min(p.length, bytes.length - pos);
      p.set(bytes.subarray(pos, pos + n));
      pos += n;
      return n;
    },
  };
}

/** Opens a capture file for streaming; the caller closes the returned file. */
export function openCapture(path: string | URL): { reader: CaptureReader; file: Deno.FsFile } {
  const file = Deno.openSync(path, { read: true });
  try {
    return { reader: new CaptureReader(file), file };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Microseconds since the epoch (fits a double exactly for any real date). */
export function tsMicros(p: { tsSec: number; tsNsec: number }): number {
  return p.tsSec * 1_000_000 + Math.floor(p.tsNsec / 1000);
}
