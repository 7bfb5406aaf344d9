/**
 * A small HPACK encoder (RFC 7541) for tests, fuzz seeds and fixtures: valid header blocks for the
 * decoder in src/parse/hpack.ts to read. The agent only decodes.
 */
import { type HeaderField, huffmanEncode, STATIC_TABLE } from "../../src/parse/hpack.ts";

const utf8e = new TextEncoder();

function writeInt(out: number[], first: number, prefixBits: number, v: number): void {
  const max = (1 << prefixBits) - 1;
  if (v < max) {
    out.push(first | v);
    return;
  }
  out.push(first | max);
  v -= max;
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

function writeString(out: number[], s: string, huffman: boolean): void {
  let bytes: Uint8Array = utf8e.encode(s);
  if (huffman) bytes = huffmanEncode(bytes);
  writeInt(out, huffman ? 0x80 : 0, 7, bytes.length);
  for (const b of bytes) out.push(b);
}

export interface HpackEncodeOptions {
  huffman?: boolean;
  /** "incremental" adds each field to the encoder's (and so the decoder's) dynamic table. */
  indexing?: "incremental" | "without" | "never";
  /** Emit a dynamic table size update first. */
  tableSizeUpdate?: number;
}

/**
 * Encodes a header list as literals with literal names, using static-table indexed fields for exact
 * matches. It keeps no dynamic table of its own, so "incremental" output is still decodable by any
 * decoder whose table is in step.
 */
export function hpackEncode(headers: readonly HeaderField[], opts: HpackEncodeOptions = {}): Uint8Array {
  const out: number[] = [];
  if (opts.tableSizeUpdate !== undefined) writeInt(out, 0x20, 5, opts.tableSizeUpdate);
  for (const [name, value] of headers) {
    const idx = STATIC_TABLE.findIndex(([n, v]) => n === name && v === value);
    if (idx >= 0) {
      writeInt(out, 0x80, 7, idx + 1);
      continue;
    }
    const nameIdx = STATIC_TABLE.findIndex(([n]) => n === name) + 1;
    const mode = opts.indexing ?? "without";
    if (mode === "incremental") writeInt(out, 0x40, 6, nameIdx);
    else writeInt(out, mode === "never" ? 0x10 : 0, 4, nameIdx);
    if (nameIdx === 0) writeString(out, name, opts.huffman ?? false);
    writeString(out, value, opts.huffman ?? false);
  }
  return Uint8Array.from(out);
}
