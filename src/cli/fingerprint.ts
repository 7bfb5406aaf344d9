/** `ja4ebpf fingerprint --pcap FILE`: JA4+ of every TCP stream of a capture, one JSON object per line. */
import { parseFlags, UsageError } from "./args.ts";
import { CaptureFormatError, openCapture } from "../parse/pcap.ts";
import { fingerprintCapture, type OfflineStats, type StreamRecord } from "../offline/fingerprint_capture.ts";
import type { AbsentConvention } from "../fingerprint/ja4t.ts";
import { parseKeyLog, type TlsKeyLog } from "../parse/tls_decrypt.ts";
import { log } from "../log.ts";
import { useLibcryptoSha256 } from "../bpf/sha256.ts";

const USAGE =
  `Usage: ja4ebpf fingerprint --pcap FILE [--keylog FILE] [--json] [--with-raw] [--ja4t-absent foxio|rust]
  Reads a pcap or pcapng capture and prints one JSON object per TCP stream (JSON lines on stdout), with the
  field names and stream numbers of FoxIO's ja4 tool: stream, transport, src, dst, src_port, dst_port,
  tls_server_name, ja4, ja4s, ja4t, ja4ts, ja4l_c, ja4l_s, http: [{ja4h, method, path}].
  A summary of skipped and malformed packets goes to stderr.

  TLS streams are decrypted when their secrets are known: from --keylog and from the TLS key logs embedded
  in the capture (pcapng Decryption Secrets Blocks, read automatically). Their HTTP/1.1 and HTTP/2 requests
  are listed under http like those of plain HTTP (HTTP/2: JA4H without the pseudo-headers). A TLS stream
  whose secrets are missing or wrong keeps its ja4/ja4s, has no http, and is counted as undecryptable.

  --pcap FILE           capture to read (required)
  --keylog FILE         TLS secrets in NSS key-log format (SSLKEYLOGFILE), merged with any in the capture
  --json                JSON lines output (the default and only format)
  --with-raw            add the raw and original-order forms: ja4_r, ja4_o, ja4_ro, ja4s_r, ja4h_r, ja4h_o,
                        ja4h_ro (ja4h_r/ja4h_ro contain cookie values in the clear)
  --ja4t-absent MODE    how JA4T/JA4TS print an absent option list, MSS or window scale:
                        foxio (default, "00" as in FoxIO's database and Wireshark) or rust ("", "0", "0")

Exit status: 0 success, 1 unexpected failure, 2 bad usage or a file that is not a capture.`;

export function main(args: string[]): Promise<number> {
  try {
    return Promise.resolve(run(args));
  } catch (e) {
    return Promise.reject(e);
  }
}

function run(args: string[]): number {
  const { values, help } = parseFlags(args, {
    pcap: { type: "string" },
    keylog: { type: "string" },
    json: { type: "boolean" },
    "with-raw": { type: "boolean" },
    "ja4t-absent": { type: "string" },
  }, USAGE);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  const path = values.pcap;
  if (typeof path !== "string" || path === "") throw new UsageError("--pcap FILE is required", USAGE);
  const absent = values["ja4t-absent"] ?? "foxio";
  if (absent !== "foxio" && absent !== "rust") {
    throw new UsageError(`--ja4t-absent must be foxio or rust, not ${JSON.stringify(absent)}`, USAGE);
  }
  let keyLog: TlsKeyLog | undefined;
  const keyPath = values.keylog;
  if (keyPath !== undefined) {
    if (typeof keyPath !== "string" || keyPath === "") throw new UsageError("--keylog needs a FILE", USAGE);
    let text: string;
    try {
      text = Deno.readTextFileSync(keyPath);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
        console.error(`ja4ebpf fingerprint: cannot open ${keyPath}: ${e.message}`);
        return 2;
      }
      throw e;
    }
    keyLog = parseKeyLog(text);
    if (keyLog.size === 0) {
      console.error(`ja4ebpf fingerprint: ${keyPath}: no key-log lines (LABEL <client random> <secret>)`);
      return 2;
    }
    if (keyLog.badLines > 0) log.warn("key log lines skipped", { file: keyPath, lines: keyLog.badLines });
  }
  let opened;
  try {
    opened = openCapture(path);
  } catch (e) {
    if (e instanceof CaptureFormatError) {
      console.error(`ja4ebpf fingerprint: ${path}: ${e.message}`);
      return 2;
    }
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      console.error(`ja4ebpf fingerprint: cannot open ${path}: ${e.message}`);
      return 2;
    }
    throw e;
  }
  const { reader, file } = opened;
  useLibcryptoSha256(); // where libcrypto opens: JA4+'s hashes at several times the speed
  const out = new LineWriter();
  let stats: OfflineStats;
  try {
    stats = fingerprintCapture(reader, {
      withRaw: values["with-raw"] === true,
      ja4tAbsent: absent as AbsentConvention,
      keyLog,
      emit: (r) => out.line(recordJson(r)),
    }).stats;
  } finally {
    file.close();
  }
  out.flush();
  report(stats);
  return 0;
}

/** Characters JSON.stringify would escape (quote, backslash, controls, lone surrogates). */
// deno-lint-ignore no-control-regex
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

function str(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

/** A flat object of strings and numbers, as JSON.stringify writes it (undefined members left out). */
function flat(o: Record<string, unknown>): string {
  let out = "{";
  for (const k in o) {
    const v = o[k];
    if (v === undefined) continue;
    if (out.length > 1) out += ",";
    out += str(k) + ":" + (typeof v === "string" ? str(v) : JSON.stringify(v));
  }
  return out + "}";
}

/**
 * One record as JSON, byte for byte what JSON.stringify(r) gives (a test holds it to that). Written by hand
 * because the generic serializer was ~8 % of a run on a big capture: records are flat strings and numbers
 * plus the http list, and almost no string needs escaping.
 */
export function recordJson(r: StreamRecord): string {
  const o = r as unknown as Record<string, unknown>;
  let out = "{";
  for (const k in o) {
    const v = o[k];
    if (v === undefined) continue;
    if (out.length > 1) out += ",";
    out += str(k) + ":";
    if (typeof v === "string") out += str(v);
    else if (Array.isArray(v)) {
      out += "[";
      for (let i = 0; i < v.length; i++) out += (i > 0 ? "," : "") + flat(v[i]);
      out += "]";
    } else out += JSON.stringify(v);
  }
  return out + "}";
}

/** JSON lines to stdout in ~64 KiB writes, as records become final (memory stays flat on big captures). */
class LineWriter {
  private chunk = "";
  private enc = new TextEncoder();
  line(s: string): void {
    this.chunk += s + "\n";
    if (this.chunk.length > 65536) this.flush();
  }
  flush(): void {
    const b = this.enc.encode(this.chunk);
    this.chunk = "";
    let off = 0;
    while (off < b.length) off += Deno.stdout.writeSync(b.subarray(off));
  }
}

function report(s: OfflineStats): void {
  const malformed = Object.values(s.malformed).reduce((x, y) => x + y, 0);
  const skipped = Object.values(s.skipped).reduce((x, y) => x + y, 0);
  log.info("capture read", {
    packets: s.packets,
    tcp_packets: s.tcpPackets,
    streams: s.streams,
    records: s.records,
    skipped,
    malformed,
  });
  if (malformed > 0) log.warn("malformed packets", { by_reason: s.malformed });
  if (skipped > 0) log.info("non-TCP packets skipped", { by_reason: s.skipped });
  if (s.decrypted > 0 || s.undecryptable > 0) {
    log.info("tls decryption", { decrypted: s.decrypted, undecryptable: s.undecryptable });
  }
  if (s.undecryptable > 0) log.warn("tls streams not decrypted", { by_reason: s.undecryptableBy });
  if (s.tlsErrors > 0 || s.httpErrors > 0 || s.gaps > 0) {
    log.warn("stream problems", { tls_errors: s.tlsErrors, http_errors: s.httpErrors, gaps: s.gaps });
  }
  for (const w of s.warnings) log.warn("capture file", { warning: w });
}
