/**
 * TLS decryption helpers for tests: a key log pulled out of a whole pcapng file, and a one-shot decryption
 * of both directions of a connection. The agent and the offline reader use TlsDecryptor and the capture
 * reader's Decryption Secrets Blocks directly.
 */
import {
  keyLogFromDecryptionSecrets,
  TlsDecryptor,
  type TlsDecryptStats,
  TlsKeyLog,
  type TlsSessionInfo,
  type TlsStopReason,
} from "../../src/parse/tls_decrypt.ts";
import type { ErrorCounts } from "../../src/parse/errors.ts";

/**
 * Walks a whole pcapng file for Decryption Secrets Blocks and merges their TLS key logs. A stop-gap
 * for callers whose capture reader does not surface DSBs; returns an empty log for classic pcap.
 */
export function keyLogFromPcapng(file: Uint8Array): TlsKeyLog {
  const log = new TlsKeyLog();
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let le = true;
  let off = 0;
  while (off + 12 <= file.length) {
    let type = dv.getUint32(off, le);
    if (type === 0x0a0d0d0a) {
      // Section Header: byte-order magic decides the endianness of this section.
      le = dv.getUint32(off + 8, true) === 0x1a2b3c4d;
      type = 0x0a0d0d0a;
    }
    const len = dv.getUint32(off + 4, le);
    if (len < 12 || len % 4 !== 0 || off + len > file.length) break;
    if (type === 0x0000000a && len >= 20) {
      const secretsType = dv.getUint32(off + 8, le);
      const dataLen = dv.getUint32(off + 12, le);
      if (16 + dataLen <= len) {
        const kl = keyLogFromDecryptionSecrets(secretsType, file.subarray(off + 16, off + 16 + dataLen));
        if (kl) log.merge(kl);
      }
    }
    off += len;
  }
  return log;
}

export interface DecryptedSession {
  info: TlsSessionInfo;
  /** Client → server application data. */
  client: Uint8Array;
  /** Server → client application data. */
  server: Uint8Array;
  errors: ErrorCounts;
  stats: TlsDecryptStats;
  stopped: { client?: TlsStopReason; server?: TlsStopReason };
}

/** One-shot: decrypts both whole directions of a connection. */
export function decryptTlsSession(
  client: Uint8Array,
  server: Uint8Array,
  keyLog: TlsKeyLog,
): DecryptedSession {
  const t = new TlsDecryptor(keyLog, { maxPending: client.length + 1 });
  t.push("client", client);
  t.push("server", server);
  return {
    info: t.info,
    client: t.take("client"),
    server: t.take("server"),
    errors: t.errors,
    stats: t.stats,
    stopped: { client: t.stopped("client"), server: t.stopped("server") },
  };
}
