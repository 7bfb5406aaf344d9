/**
 * SHA-256 rounds from OpenSSL's libcrypto (src/bpf/ffi.ts) for JA4+'s hashes (src/fingerprint/sha.ts): one
 * FFI call per message, on the bytes sha.ts has already padded, so that SHA256_Update processes whole blocks
 * straight from the initial state and its context holds the digest's words. With the CPU's SHA instructions
 * about 3× faster than the TypeScript rounds on a short list, and more on a long cookie.
 */
import { libcrypto } from "./ffi.ts";
import { hash12, hash12Pure, setSha256Blocks, type Sha256Blocks } from "../fingerprint/sha.ts";

/** The block function, or undefined where libcrypto cannot be opened. */
export function libcryptoSha256(): Sha256Blocks | undefined {
  const lib = libcrypto();
  if (lib === null) return undefined;
  const sym = lib.symbols;
  // SHA256_CTX is 112 bytes (h[8], Nl, Nh, data[16], num, md_len); room to spare. Its first 8 words are h.
  const ctx = new Uint8Array(256);
  if (sym.SHA256_Init(ctx) !== 1) return undefined;
  const initial = ctx.slice();
  const words = new Int32Array(ctx.buffer, 0, 8);
  const lengths: bigint[] = []; // usize travels as BigInt: one per block count, made once
  return (msg, total) => {
    ctx.set(initial);
    const blocks = total >> 6;
    const n = blocks < 1024 ? (lengths[blocks] ??= BigInt(total)) : BigInt(total);
    sym.SHA256_Update(ctx, msg, n);
    return words;
  };
}

let installed: string | undefined;

/**
 * JA4+'s SHA-256 through libcrypto from now on, where it opens (checked against the TypeScript rounds on
 * one input first); returns the library's file name, or undefined (the TypeScript rounds stay).
 */
export function useLibcryptoSha256(): string | undefined {
  if (installed !== undefined) return installed || undefined;
  installed = "";
  const f = libcryptoSha256();
  if (f === undefined) return undefined;
  setSha256Blocks(f);
  // One and several blocks, as the TypeScript rounds have them: a libcrypto that disagrees is not used.
  for (const probe of ["ja4ebpf", "t13d1516h2_8daaf6152771_".repeat(12)]) {
    if (hash12(probe, false) !== hash12Pure(probe)) {
      setSha256Blocks(undefined);
      return undefined;
    }
  }
  installed = libcrypto()!.soname;
  return installed;
}
