/** The BPF object built by scripts/build-bpf.sh, embedded as base64 so one bundle carries it. */
import { Buffer } from "node:buffer";
import { BPF_OBJECT_B64 } from "./object.gen.ts";

let bytes: Uint8Array | undefined;

export function embeddedObject(): Uint8Array {
  bytes ??= new Uint8Array(Buffer.from(BPF_OBJECT_B64, "base64"));
  return bytes;
}
