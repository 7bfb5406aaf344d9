/**
 * Offline TLS decryption with an NSS key log (SSLKEYLOGFILE format): TLS 1.3 (AES-128/256-GCM,
 * ChaCha20-Poly1305, KeyUpdate) and TLS 1.2 AEAD suites (AES-GCM, ChaCha20-Poly1305) from CLIENT_RANDOM
 * master secrets. Feed each direction's reassembled TCP payload in order; take the application-data
 * plaintext of each direction and hand it to the HTTP/1 or HTTP/2 parser chosen by `info.alpn`.
 *
 * Never throws on bad input: problems are counted in `errors` and stop only the direction they hit.
 */
import { be16, be24, fromHex, toHex } from "./bytes.ts";
import { createDecipheriv, createHmac } from "node:crypto";
import { type ErrorCounts, newErrorCounts, type ParseErrorCode } from "./errors.ts";
import { parseClientHello, parseServerHello } from "./tls.ts";

// ---------------------------------------------------------------------------------------------------
// Key log

const HEX = /^[0-9a-fA-F]+$/;

/** Secrets of an NSS key log, by label and client random. */
export class TlsKeyLog {
  private readonly map = new Map<string, Uint8Array>();
  /** Lines that were neither comments, blank nor `LABEL <hex random> <hex secret>`. */
  badLines = 0;

  get size(): number {
    return this.map.size;
  }

  add(label: string, clientRandom: Uint8Array, secret: Uint8Array): void {
    this.map.set(`${label} ${toHex(clientRandom)}`, secret);
  }

  get(label: string, clientRandom: Uint8Array): Uint8Array | undefined {
    return this.map.get(`${label} ${toHex(clientRandom)}`);
  }

  /** Adds every entry of `other` (e.g. several pcapng Decryption Secrets Blocks). */
  merge(other: TlsKeyLog): void {
    for (const [k, v] of other.map) this.map.set(k, v);
    this.badLines += other.badLines;
  }
}

/** Parses SSLKEYLOGFILE text. Unknown labels are kept (harmless); malformed lines are counted. */
export function parseKeyLog(text: string, into: TlsKeyLog = new TlsKeyLog()): TlsKeyLog {
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const f = line.split(/\s+/);
    if (
      f.length !== 3 || f[1].length !== 64 || !HEX.test(f[1]) || f[2].length % 2 !== 0 || !HEX.test(f[2]) ||
      f[2].length === 0
    ) {
      into.badLines++;
      continue;
    }
    into.add(f[0], fromHex(f[1]), fromHex(f[2]));
  }
  return into;
}

/** pcapng Decryption Secrets Block secrets type for a TLS key log ("TLSK"). */
export const DSB_TLS_KEY_LOG = 0x544c534b;

/**
 * Key log from one pcapng Decryption Secrets Block (block type 0x0000000A): its secrets type and data.
 * Returns null for other secrets types (WireGuard, ZigBee…).
 */
export function keyLogFromDecryptionSecrets(secretsType: number, data: Uint8Array): TlsKeyLog | null {
  if (secretsType !== DSB_TLS_KEY_LOG) return null;
  return parseKeyLog(new TextDecoder().decode(data));
}

// ---------------------------------------------------------------------------------------------------
// Key schedule

type Hash = "sha256" | "sha384";
type Aead = "aes-128-gcm" | "aes-256-gcm" | "chacha20-poly1305";

interface Suite {
  aead: Aead;
  hash: Hash;
  keyLen: number;
}

const TLS13_SUITES: Record<number, Suite> = {
  0x1301: { aead: "aes-128-gcm", hash: "sha256", keyLen: 16 },
  0x1302: { aead: "aes-256-gcm", hash: "sha384", keyLen: 32 },
  0x1303: { aead: "chacha20-poly1305", hash: "sha256", keyLen: 32 },
};

const GCM128_256: Suite = { aead: "aes-128-gcm", hash: "sha256", keyLen: 16 };
const GCM256_384: Suite = { aead: "aes-256-gcm", hash: "sha384", keyLen: 32 };
const CHACHA: Suite = { aead: "chacha20-poly1305", hash: "sha256", keyLen: 32 };

const TLS12_SUITES: Record<number, Suite> = {
  0x009c: GCM128_256, // RSA_WITH_AES_128_GCM_SHA256
  0x009d: GCM256_384,
  0x009e: GCM128_256, // DHE_RSA
  0x009f: GCM256_384,
  0x00a2: GCM128_256, // DHE_DSS
  0x00a3: GCM256_384,
  0xc02b: GCM128_256, // ECDHE_ECDSA
  0xc02c: GCM256_384,
  0xc02f: GCM128_256, // ECDHE_RSA
  0xc030: GCM256_384,
  0xcca8: CHACHA, // ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
  0xcca9: CHACHA, // ECDHE_ECDSA
  0xccaa: CHACHA, // DHE_RSA
};

function hmac(hash: Hash, key: Uint8Array, ...data: Uint8Array[]): Uint8Array {
  const h = createHmac(hash, key);
  for (const d of data) h.update(d);
  return new Uint8Array(h.digest());
}

/** RFC 5869 HKDF-Expand. */
export function hkdfExpand(hash: Hash, prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let t: Uint8Array = new Uint8Array(0);
  for (let i = 1, o = 0; o < length; i++) {
    t = hmac(hash, prk, t, info, Uint8Array.of(i));
    out.set(t.subarray(0, Math.min(t.length, length - o)), o);
    o += t.length;
  }
  return out;
}

const ascii = new TextEncoder();

/** RFC 8446 7.1 HKDF-Expand-Label. */
export function hkdfExpandLabel(
  hash: Hash,
  secret: Uint8Array,
  label: string,
  context: Uint8Array,
  length: number,
): Uint8Array {
  const l = ascii.encode("tls13 " + label);
  const info = new Uint8Array(2 + 1 + l.length + 1 + context.length);
  info[0] = length >> 8;
  info[1] = length & 0xff;
  info[2] = l.length;
  info.set(l, 3);
  info[3 + l.length] = context.length;
  info.set(context, 4 + l.length);
  return hkdfExpand(hash, secret, info, length);
}

/** RFC 5246 5 PRF (P_hash with the suite's hash). */
export function tls12Prf(
  hash: Hash,
  secret: Uint8Array,
  label: string,
  seed: Uint8Array,
  length: number,
): Uint8Array {
  const ls = new Uint8Array([...ascii.encode(label), ...seed]);
  const out = new Uint8Array(length);
  let a: Uint8Array = ls;
  for (let o = 0; o < length;) {
    a = hmac(hash, secret, a);
    const p = hmac(hash, secret, a, ls);
    out.set(p.subarray(0, Math.min(p.length, length - o)), o);
    o += p.length;
  }
  return out;
}

interface RecordKey {
  aead: Aead;
  key: Uint8Array;
  /** TLS 1.3 and TLS 1.2 ChaCha: 12-byte IV XORed with the sequence number. TLS 1.2 GCM: 4-byte salt. */
  iv: Uint8Array;
  seq: bigint;
  /** TLS 1.3 traffic secret (for KeyUpdate), with its hash. */
  secret?: Uint8Array;
  hash: Hash;
}

function tls13Key(suite: Suite, secret: Uint8Array): RecordKey {
  return {
    aead: suite.aead,
    key: hkdfExpandLabel(suite.hash, secret, "key", new Uint8Array(0), suite.keyLen),
    iv: hkdfExpandLabel(suite.hash, secret, "iv", new Uint8Array(0), 12),
    seq: 0n,
    secret,
    hash: suite.hash,
  };
}

function xorNonce(iv: Uint8Array, seq: bigint): Uint8Array {
  const n = iv.slice();
  for (let i = 0; i < 8; i++) n[11 - i] ^= Number((seq >> BigInt(8 * i)) & 0xffn);
  return n;
}

function seqBytes(seq: bigint): Uint8Array {
  const b = new Uint8Array(8);
  for (let i = 0; i < 8; i++) b[7 - i] = Number((seq >> BigInt(8 * i)) & 0xffn);
  return b;
}

/** AEAD open; null when authentication fails. */
function open(
  aead: Aead,
  key: Uint8Array,
  nonce: Uint8Array,
  aad: Uint8Array,
  ct: Uint8Array,
): Uint8Array | null {
  if (ct.length < 16) return null;
  try {
    const d = createDecipheriv(aead, key, nonce, { authTagLength: 16 } as Record<string, number>);
    // deno-lint-ignore no-explicit-any
    (d as any).setAAD(aad);
    // deno-lint-ignore no-explicit-any
    (d as any).setAuthTag(ct.subarray(ct.length - 16));
    const a = d.update(ct.subarray(0, ct.length - 16));
    const b = d.final();
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------
// Session

export type TlsDir = "client" | "server";

export interface TlsSessionInfo {
  /** 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3), once the ServerHello is seen. */
  version?: number;
  cipherSuite?: number;
  clientRandom?: Uint8Array;
  serverRandom?: Uint8Array;
  serverName?: string;
  /** ALPN the server selected (TLS 1.2: ServerHello; TLS 1.3: EncryptedExtensions, once decrypted). */
  alpn?: string;
}

export interface TlsDecryptStats {
  records: number;
  decryptedRecords: number;
  /** Records whose AEAD tag did not verify (wrong key, or skipped 0-RTT data). */
  authFailures: number;
  plaintextBytes: number;
}

/** Why a direction stopped producing plaintext. */
export type TlsStopReason =
  | "no-keys" // the key log has no secret for this client random
  | "unsupported-suite"
  | "malformed"
  | "oversize"
  | "auth-failed";

const REC_CCS = 20, REC_HANDSHAKE = 22, REC_APPDATA = 23; // alerts (21) need no action
/** 2^14 plaintext + 2048 expansion (TLS 1.2 allowance; 1.3 needs 256). */
const MAX_RECORD = 16384 + 2048;
const MAX_HANDSHAKE = 256 * 1024;

class Direction {
  chunks: Uint8Array[] = [];
  buffered = 0;
  /** Set after ChangeCipherSpec (1.2) or for every appdata record (1.3). */
  key: RecordKey | undefined;
  /** TLS 1.3: "hs" until this side's Finished, then "app". */
  stage: "plain" | "hs" | "app" = "plain";
  hs: Uint8Array = new Uint8Array(0);
  out: Uint8Array[] = [];
  stopped: TlsStopReason | undefined;
  skippedFailures = 0;

  push(b: Uint8Array): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.buffered += b.length;
  }

  peek(n: number): Uint8Array {
    if (this.chunks[0]?.length >= n) return this.chunks[0].subarray(0, n);
    const all = new Uint8Array(this.buffered);
    let o = 0;
    for (const c of this.chunks) {
      all.set(c, o);
      o += c.length;
    }
    this.chunks = all.length ? [all] : [];
    return all.subarray(0, n);
  }

  take(n: number): Uint8Array {
    const r = this.peek(n);
    const first = this.chunks[0];
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return r;
  }
}

export interface TlsDecryptorOptions {
  /** Cap on bytes buffered per direction while waiting for the other side's hello. Default 1 MiB. */
  maxPending?: number;
}

/**
 * Decrypts one TLS connection. Call `push("client" | "server", bytes)` with each direction's TCP payload in
 * order (interleaving between directions does not matter), then `take(dir)` for new plaintext.
 */
export class TlsDecryptor {
  /** Exceptions caught inside push() in this process: bugs turned into a "malformed" stop (fuzzing checks it). */
  static exceptions = 0;
  readonly info: TlsSessionInfo = {};
  readonly errors: ErrorCounts = newErrorCounts();
  readonly stats: TlsDecryptStats = { records: 0, decryptedRecords: 0, authFailures: 0, plaintextBytes: 0 };
  private readonly dirs: Record<TlsDir, Direction> = { client: new Direction(), server: new Direction() };
  private suite: Suite | undefined;
  private readonly maxPending: number;

  constructor(private readonly keyLog: TlsKeyLog, opts: TlsDecryptorOptions = {}) {
    this.maxPending = opts.maxPending ?? 1 << 20;
  }

  /** Why a direction stopped, or undefined while it is fine. */
  stopped(dir: TlsDir): TlsStopReason | undefined {
    return this.dirs[dir].stopped;
  }

  push(dir: TlsDir, bytes: Uint8Array): void {
    const d = this.dirs[dir];
    if (d.stopped) return;
    d.push(bytes);
    try {
      this.run(dir);
      // The ServerHello unblocks client records that were waiting for the version and suite.
      if (dir === "server" && this.info.version !== undefined) this.run("client");
    } catch (e) {
      // A bug, not bad input: keep the promise of never throwing (counted so fuzzing still sees it).
      TlsDecryptor.exceptions++;
      this.stop(d, "malformed", `tls decrypt exception: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Plaintext application data decrypted since the last call, concatenated. */
  take(dir: TlsDir): Uint8Array {
    const d = this.dirs[dir];
    if (d.out.length === 0) return new Uint8Array(0);
    const n = d.out.reduce((s, c) => s + c.length, 0);
    const all = new Uint8Array(n);
    let o = 0;
    for (const c of d.out) {
      all.set(c, o);
      o += c.length;
    }
    d.out = [];
    return all;
  }

  private stop(d: Direction, reason: TlsStopReason, _msg: string): void {
    const code: ParseErrorCode = reason === "oversize"
      ? "oversize"
      : reason === "malformed" || reason === "auth-failed"
      ? "malformed"
      : "unsupported";
    this.errors[code]++;
    d.stopped = reason;
    d.chunks = [];
    d.buffered = 0;
    d.hs = new Uint8Array(0);
  }

  private run(dir: TlsDir): void {
    const d = this.dirs[dir];
    while (!d.stopped && d.buffered >= 5) {
      const h = d.peek(5);
      const type = h[0], len = be16(h, 3);
      if (type < REC_CCS || type > REC_APPDATA || h[1] !== 3) {
        return this.stop(d, "malformed", `not a TLS record (type ${type})`);
      }
      if (len > MAX_RECORD) return this.stop(d, "oversize", `record of ${len} bytes`);
      if (d.buffered < 5 + len) return;
      // Client records after its hellos need the server's version and suite: wait for them.
      if (
        dir === "client" && this.info.version === undefined &&
        !(type === REC_HANDSHAKE && d.stage === "plain")
      ) {
        if (d.buffered > this.maxPending) this.stop(d, "oversize", "too much client data before ServerHello");
        return;
      }
      const rec = d.take(5 + len).slice();
      this.stats.records++;
      this.record(dir, d, rec);
    }
  }

  private record(dir: TlsDir, d: Direction, rec: Uint8Array): void {
    const type = rec[0];
    const body = rec.subarray(5);
    const tls13 = this.info.version === 0x0304;
    if (type === REC_CCS) {
      if (!tls13 && this.info.version !== undefined) {
        const k = this.tls12Key(dir);
        if (!k) return;
        d.key = k;
      }
      return;
    }
    if (d.key === undefined && !(tls13 && type === REC_APPDATA)) {
      // Plaintext: hellos (and a TLS 1.2 server's Certificate etc.), or an unencrypted alert.
      if (type === REC_HANDSHAKE) this.handshakeBytes(dir, d, body);
      return;
    }
    if (tls13 && d.key === undefined) {
      const k = this.tls13Key(dir, "hs");
      if (!k) return;
      d.key = k;
      d.stage = "hs";
    }
    const pt = this.decrypt(d.key!, rec, tls13);
    if (pt === null) {
      this.stats.authFailures++;
      // TLS 1.3 handshake stage: a client's rejected 0-RTT records fail here and are skipped, as the
      // server does. Anything else means wrong keys or a gap in the stream.
      if (tls13 && dir === "client" && d.stage === "hs" && ++d.skippedFailures <= 16) return;
      return this.stop(d, "auth-failed", "record authentication failed");
    }
    d.key!.seq++;
    this.stats.decryptedRecords++;
    let content = pt, inner = type;
    if (tls13) {
      // TLSInnerPlaintext: content || type || zero padding.
      let i = pt.length - 1;
      while (i >= 0 && pt[i] === 0) i--;
      if (i < 0) return this.stop(d, "malformed", "TLS 1.3 record without content type");
      inner = pt[i];
      content = pt.subarray(0, i);
    }
    if (inner === REC_APPDATA) {
      if (content.length > 0) {
        d.out.push(content);
        this.stats.plaintextBytes += content.length;
      }
    } else if (inner === REC_HANDSHAKE) {
      this.handshakeBytes(dir, d, content);
    }
    // Alerts (close_notify) need nothing.
  }

  private decrypt(k: RecordKey, rec: Uint8Array, tls13: boolean): Uint8Array | null {
    const body = rec.subarray(5);
    if (tls13) return open(k.aead, k.key, xorNonce(k.iv, k.seq), rec.subarray(0, 5), body);
    let nonce: Uint8Array, ct: Uint8Array;
    if (k.aead === "chacha20-poly1305") {
      nonce = xorNonce(k.iv, k.seq);
      ct = body;
    } else {
      if (body.length < 8 + 16) return null;
      nonce = new Uint8Array(12);
      nonce.set(k.iv, 0);
      nonce.set(body.subarray(0, 8), 4);
      ct = body.subarray(8);
    }
    const aad = new Uint8Array(13);
    aad.set(seqBytes(k.seq), 0);
    aad[8] = rec[0];
    aad[9] = rec[1];
    aad[10] = rec[2];
    const ptLen = ct.length - 16;
    aad[11] = (ptLen >> 8) & 0xff;
    aad[12] = ptLen & 0xff;
    return open(k.aead, k.key, nonce, aad, ct);
  }

  /** Reassembles handshake messages (they may span records) and acts on the ones that matter. */
  private handshakeBytes(dir: TlsDir, d: Direction, bytes: Uint8Array): void {
    if (d.hs.length + bytes.length > MAX_HANDSHAKE) return this.stop(d, "oversize", "handshake over cap");
    const hs = new Uint8Array(d.hs.length + bytes.length);
    hs.set(d.hs, 0);
    hs.set(bytes, d.hs.length);
    let off = 0;
    while (off + 4 <= hs.length) {
      const t = hs[off], len = be24(hs, off + 1);
      if (off + 4 + len > hs.length) break;
      this.handshakeMessage(dir, d, t, hs.subarray(off + 4, off + 4 + len));
      off += 4 + len;
      if (d.stopped) return;
    }
    d.hs = hs.slice(off);
  }

  private handshakeMessage(dir: TlsDir, d: Direction, type: number, body: Uint8Array): void {
    if (type === 1 && dir === "client" && this.info.clientRandom === undefined) {
      // The first ClientHello's random names the session in the key log (also after HelloRetryRequest).
      if (body.length < 34) return this.stop(d, "malformed", "short ClientHello");
      this.info.clientRandom = body.slice(2, 34);
      const ch = parseClientHello(body);
      if (ch.ok && ch.value.serverName !== undefined) this.info.serverName = ch.value.serverName;
    } else if (type === 2 && dir === "server") {
      const sh = parseServerHello(body);
      if (!sh.ok) return this.stop(d, "malformed", `ServerHello: ${sh.error.message}`);
      if (sh.value.helloRetryRequest) return; // the real ServerHello follows
      this.info.serverRandom = body.slice(2, 34);
      this.info.cipherSuite = sh.value.cipherSuite;
      this.info.version = sh.value.supportedVersion ?? sh.value.legacyVersion;
      if (sh.value.alpn) this.info.alpn = new TextDecoder().decode(sh.value.alpn);
      const table = this.info.version === 0x0304 ? TLS13_SUITES : TLS12_SUITES;
      this.suite = table[sh.value.cipherSuite];
      if (!this.suite || (this.info.version !== 0x0304 && this.info.version !== 0x0303)) {
        this.stop(this.dirs.client, "unsupported-suite", "cipher suite or version not supported");
        return this.stop(d, "unsupported-suite", "cipher suite or version not supported");
      }
    } else if (type === 8 && dir === "server") {
      this.encryptedExtensions(body);
    } else if (type === 20 && this.info.version === 0x0304 && d.stage === "hs") {
      // This side's Finished: its next records use the application traffic secret.
      const k = this.tls13Key(dir, "app");
      if (!k) return;
      d.key = k;
      d.stage = "app";
    } else if (type === 24 && this.info.version === 0x0304 && d.stage === "app" && d.key?.secret) {
      // KeyUpdate: next secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length).
      const next = hkdfExpandLabel(
        d.key.hash,
        d.key.secret,
        "traffic upd",
        new Uint8Array(0),
        d.key.secret.length,
      );
      d.key = tls13Key(this.suite!, next);
    }
  }

  private encryptedExtensions(body: Uint8Array): void {
    if (body.length < 2) return;
    const end = Math.min(body.length, 2 + be16(body, 0));
    for (let o = 2; o + 4 <= end;) {
      const t = be16(body, o), l = be16(body, o + 2);
      if (t === 0x0010 && l >= 3 && o + 4 + l <= end) {
        const n = body[o + 6];
        if (7 + n <= 4 + l) this.info.alpn = new TextDecoder().decode(body.subarray(o + 7, o + 7 + n));
      }
      o += 4 + l;
    }
  }

  private tls13Key(dir: TlsDir, stage: "hs" | "app"): RecordKey | undefined {
    const d = this.dirs[dir];
    const label = `${dir === "client" ? "CLIENT" : "SERVER"}_${
      stage === "hs" ? "HANDSHAKE_" : ""
    }TRAFFIC_SECRET${stage === "app" ? "_0" : ""}`;
    const secret = this.info.clientRandom && this.keyLog.get(label, this.info.clientRandom);
    if (!secret || !this.suite) {
      this.stop(d, "no-keys", `no ${label} in key log`);
      return undefined;
    }
    return tls13Key(this.suite, secret);
  }

  private tls12Key(dir: TlsDir): RecordKey | undefined {
    const d = this.dirs[dir];
    const s = this.suite, cr = this.info.clientRandom, sr = this.info.serverRandom;
    const ms = cr && this.keyLog.get("CLIENT_RANDOM", cr);
    if (!s || !cr || !sr || !ms) {
      this.stop(d, "no-keys", "no CLIENT_RANDOM master secret in key log");
      return undefined;
    }
    const ivLen = s.aead === "chacha20-poly1305" ? 12 : 4;
    const seed = new Uint8Array(64);
    seed.set(sr, 0);
    seed.set(cr, 32);
    const kb = tls12Prf(s.hash, ms, "key expansion", seed, 2 * s.keyLen + 2 * ivLen);
    const client = dir === "client";
    const key = client ? kb.subarray(0, s.keyLen) : kb.subarray(s.keyLen, 2 * s.keyLen);
    const ivOff = 2 * s.keyLen + (client ? 0 : ivLen);
    return { aead: s.aead, key: key.slice(), iv: kb.slice(ivOff, ivOff + ivLen), seq: 0n, hash: s.hash };
  }
}
