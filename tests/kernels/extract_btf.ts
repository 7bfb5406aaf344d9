/**
 * Cuts a kernel's own BTF (the bytes /sys/kernel/btf/vmlinux shows once it runs) out of its boot image.
 * Debian's arm64 vmlinuz is a gzip'd raw Image: no ELF section headers, so the .BTF section is found by its
 * header (magic 0xeB9F, version 1, a 24-byte header, types first, then strings starting with "\0").
 *
 *   deno run --allow-read --allow-write tests/kernels/extract_btf.ts VMLINUZ OUT.btf
 */

const MAGIC = 0xeb9f;
const HDR_LEN = 24;

/** The image itself: gunzipped when it starts with the gzip magic (arm64 Debian), else as is. */
export async function kernelImage(bytes: Uint8Array): Promise<Uint8Array> {
  if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * The largest well-formed BTF blob in `image`, or null. Well formed: version 1, header 24 bytes, type section
 * at 0 and string section right after it, both inside the image, and the string section starting with "\0".
 */
export function findBtf(image: Uint8Array): Uint8Array | null {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  let best: Uint8Array | null = null;
  for (let i = 0; i + HDR_LEN <= image.length; i += 4) {
    // Little-endian magic bytes 9f eb, version 1, flags 0, hdr_len 24 (the section is 4-byte aligned).
    if (image[i] !== 0x9f || image[i + 1] !== 0xeb) continue;
    if (v.getUint16(i, true) !== MAGIC || image[i + 2] !== 1 || v.getUint32(i + 4, true) !== HDR_LEN) {
      continue;
    }
    const typeOff = v.getUint32(i + 8, true);
    const typeLen = v.getUint32(i + 12, true);
    const strOff = v.getUint32(i + 16, true);
    const strLen = v.getUint32(i + 20, true);
    if (typeOff !== 0 || strOff !== typeLen || strLen === 0) continue;
    const end = i + HDR_LEN + strOff + strLen;
    if (end > image.length || image[i + HDR_LEN + strOff] !== 0) continue;
    if (!best || end - i > best.length) best = image.subarray(i, end);
  }
  return best;
}

if (import.meta.main) {
  const [src, out] = Deno.args;
  if (!src || !out) {
    console.error("usage: extract_btf.ts VMLINUZ OUT.btf");
    Deno.exit(2);
  }
  const btf = findBtf(await kernelImage(await Deno.readFile(src)));
  if (!btf) {
    console.error(`extract_btf: no BTF found in ${src} (kernel built without CONFIG_DEBUG_INFO_BTF?)`);
    Deno.exit(1);
  }
  await Deno.writeFile(out + ".tmp", btf);
  await Deno.rename(out + ".tmp", out);
  console.error(`extract_btf: ${btf.length} bytes of BTF from ${src}`);
}
