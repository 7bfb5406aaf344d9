/** hash12 through node:crypto: the reference the pure-TS SHA-256 of src/fingerprint/sha.ts is checked and benchmarked against. */
import { createHash } from "node:crypto";
import { EMPTY12 } from "../../src/fingerprint/sha.ts";

export function hash12Node(s: string): string {
  if (s.length === 0) return EMPTY12;
  return createHash("sha256").update(s).digest("hex").slice(0, 12);
}
