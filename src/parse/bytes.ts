/**
 * Byte helpers shared by the parsers, tests and tools. The readers do no bounds check: every caller has
 * checked the length first (a read past the end would give NaN-free garbage, not an exception).
 */

/** Whether b[p, p + m.length) equals m (false when b ends before). A loop: shorter than a native call costs. */
export function bytesAt(b: Uint8Array, p: number, m: Uint8Array): boolean {
  const n = m.length;
  if (b.length - p < n) return false;
  for (let i = 0; i < n; i++) if (b[p + i] !== m[i]) return false;
  return true;
}

/** Big-endian unsigned 16-bit read at `o`. */
export function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

/** Big-endian unsigned 24-bit read at `o` (TLS handshake lengths). */
export function be24(b: Uint8Array, o: number): number {
  return (b[o]! << 16) | (b[o + 1]! << 8) | b[o + 2]!;
}

/** Big-endian unsigned 32-bit read at `o`. */
export function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** Little-endian unsigned 32-bit read at `o`. */
export function le32(b: Uint8Array, o: number): number {
  return ((b[o + 3]! << 24) | (b[o + 2]! << 16) | (b[o + 1]! << 8) | b[o]!) >>> 0;
}

/** The parts one after another in a new array; `size` is their total length when the caller knows it. */
export function concatBytes(parts: readonly Uint8Array[], size?: number): Uint8Array {
  const out = new Uint8Array(size ?? parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Hex text (two digits a byte, either case) → bytes. */
export function fromHex(s: string): Uint8Array {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Bytes → lower-case hex text. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}
