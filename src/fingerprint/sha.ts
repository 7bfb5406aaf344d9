/**
 * hash12: the first 12 lower-case hex digits of SHA-256 over the UTF-8 bytes of a string, with the JA4+
 * rule that the empty string gives "000000000000".
 *
 * Measured on the target machine with `deno bench` (bench/fingerprint_bench.ts, "hash12" groups): the small
 * pure-TS SHA-256 below takes ~0.4–0.6 µs for a one-block input and ~0.7 µs for two blocks (typical JA4
 * lists), node:crypto's createHash ~0.7 µs and ~1.9 µs (its per-call object set-up dominates). OpenSSL's
 * block function through FFI, called once per message on the padded bytes (src/bpf/sha256.ts), ~0.26 µs for
 * two blocks and ~1.3 µs for nine (the TypeScript rounds: ~0.75 and ~3.4): the commands that fingerprint
 * install it (setSha256Blocks) where libcrypto is there; these rounds are the fallback, and the cross-check.
 * node:crypto stays as a second cross-check in tests and the benchmark. All are synchronous. hash12 also
 * memoises (see below): the same lists recur across clients, and a hit skips SHA-256 entirely.
 */
const K = new Int32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

const W = new Int32Array(64);
const H = new Int32Array(8);
let block = new Uint8Array(1024);
const encoder = new TextEncoder();

function compress(m: Uint8Array, off: number): void {
  // Message schedule first, then the rounds: no per-round branch in the hot loop.
  for (let i = 0; i < 16; i++) {
    const j = off + (i << 2);
    W[i] = (m[j] << 24) | (m[j + 1] << 16) | (m[j + 2] << 8) | m[j + 3];
  }
  for (let i = 16; i < 64; i++) {
    const x = W[i - 15], y = W[i - 2];
    W[i] = (W[i - 16] + (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) + W[i - 7] +
      (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10))) | 0;
  }
  let a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
  for (let i = 0; i < 64; i++) {
    const t1 = (h + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) +
      (g ^ (e & (f ^ g))) + K[i] + W[i]) | 0;
    const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) +
      ((a & b) | (c & (a | b)))) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  H[0] = (H[0] + a) | 0;
  H[1] = (H[1] + b) | 0;
  H[2] = (H[2] + c) | 0;
  H[3] = (H[3] + d) | 0;
  H[4] = (H[4] + e) | 0;
  H[5] = (H[5] + f) | 0;
  H[6] = (H[6] + g) | 0;
  H[7] = (H[7] + h) | 0;
}

/**
 * The 8 state words after compressing the `total` bytes (a multiple of 64) of a padded message from the
 * initial state: another implementation of the rounds (src/bpf/sha256.ts: OpenSSL's, which uses the CPU's
 * SHA instructions). The words may be a shared buffer.
 */
export type Sha256Blocks = (msg: Uint8Array, total: number) => Int32Array;
let blocks: Sha256Blocks | undefined;

/** Compresses with `f` from now on (undefined: this module's TypeScript rounds). */
export function setSha256Blocks(f: Sha256Blocks | undefined): void {
  blocks = f;
}

/** SHA-256 of bytes; returns the 8 state words (shared buffer: copy if you keep it). */
function sha256Words(msg: Uint8Array, len: number, native = true): Int32Array {
  // msg has room for padding (callers pass our scratch `block`).
  const total = (((len + 8) >> 6) + 1) << 6;
  msg[len] = 0x80;
  msg.fill(0, len + 1, total);
  const bits = len * 8;
  msg[total - 4] = (bits >>> 24) & 0xff;
  msg[total - 3] = (bits >>> 16) & 0xff;
  msg[total - 2] = (bits >>> 8) & 0xff;
  msg[total - 1] = bits & 0xff;
  msg[total - 5] = Math.floor(bits / 0x100000000) & 0xff;
  if (native && blocks !== undefined) return blocks(msg, total);
  H[0] = 0x6a09e667;
  H[1] = 0xbb67ae85 | 0;
  H[2] = 0x3c6ef372;
  H[3] = 0xa54ff53a | 0;
  H[4] = 0x510e527f;
  H[5] = 0x9b05688c | 0;
  H[6] = 0x1f83d9ab;
  H[7] = 0x5be0cd19;
  for (let off = 0; off < total; off += 64) compress(msg, off);
  return H;
}

function ensure(n: number): void {
  if (block.length < n) block = new Uint8Array(Math.max(n, block.length * 2));
}

/** Loads the UTF-8 bytes of `s` into the scratch block; returns the byte length. */
function load(s: string): number {
  const n = s.length;
  ensure(n + 72);
  let ascii = true;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      ascii = false;
      break;
    }
    block[i] = c;
  }
  if (ascii) return n;
  const bytes = encoder.encode(s);
  ensure(bytes.length + 72);
  block.set(bytes, 0);
  return bytes.length;
}

const HEX = "0123456789abcdef";
/** Byte → two hex digits. */
const HEX2: string[] = [];
for (let i = 0; i < 256; i++) HEX2.push(HEX[i >> 4] + HEX[i & 0xf]);

function hex32(v: number, digits: number): string {
  let s = "";
  for (let i = 7; i >= 8 - digits; i--) s += HEX[(v >>> (i * 4)) & 0xf];
  return s;
}

/** First 12 hex digits of the digest from the state words h0, h1. */
function hex12(h0: number, h1: number): string {
  return HEX2[h0 >>> 24] + HEX2[(h0 >>> 16) & 0xff] + HEX2[(h0 >>> 8) & 0xff] + HEX2[h0 & 0xff] +
    HEX2[h1 >>> 24] + HEX2[(h1 >>> 16) & 0xff];
}

/** Full SHA-256 of a string's UTF-8 bytes as 64 lower-case hex digits. */
export function sha256Hex(s: string): string {
  const len = load(s);
  const h = sha256Words(block, len);
  let out = "";
  for (let i = 0; i < 8; i++) out += hex32(h[i], 8);
  return out;
}

// Real traffic repeats a small set of cipher/extension lists, so hash12 results are memoised. Bounded: the
// map is emptied when full (a cheap, allocation-free policy; a refill costs one SHA-256 per distinct list).
const CACHE_MAX = 4096;
const cache = new Map<string, string>();

/** Empties the hash12 memo (the benchmark uses it to measure the uncached path). */
export function clearHash12Cache(): void {
  cache.clear();
}

/**
 * JA4+ hash12: "000000000000" for the empty string, else the first 12 hex digits of SHA-256. `memo` false:
 * for inputs that will not come again (a user's cookie values), which would only churn the memo.
 */
export function hash12(s: string, memo = true): string {
  if (s.length === 0) return EMPTY12;
  let v = memo ? cache.get(s) : undefined;
  if (v === undefined) {
    v = hash12Written(load(s));
    if (!memo) return v;
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(s, v);
  }
  return v;
}

export const EMPTY12 = "000000000000";

/**
 * The scratch block with room for an `n`-byte message, for a caller that writes the message's bytes itself
 * (no string of it made) and then calls hash12Written. Any other call of this module may replace the block:
 * write between the two calls only.
 */
export function messageBlock(n: number): Uint8Array {
  ensure(n + 72);
  return block;
}

/** hash12 of the first `len` bytes the caller wrote into messageBlock's block (not memoised). */
export function hash12Written(len: number): string {
  if (len === 0) return EMPTY12;
  const h = sha256Words(block, len);
  return hex12(h[0], h[1]);
}

/** hash12 always through the pure-TS SHA-256 (for tests and the benchmark). */
export function hash12Pure(s: string): string {
  if (s.length === 0) return EMPTY12;
  const len = load(s);
  const h = sha256Words(block, len, false);
  return hex12(h[0], h[1]);
}
