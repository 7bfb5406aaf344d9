/**
 * JA4S: TLS server fingerprint from a ServerHello (spec §2). FoxIO License 1.1 (patent pending).
 */
import type { ServerHello } from "../parse/tls.ts";
import { alpnCode, type AlpnRule, count2, hex4, joinHex, tlsVersionCode } from "./common.ts";
import { hash12 } from "./sha.ts";
import type { Transport } from "./ja4.ts";

export interface Ja4s {
  ja4s: string;
  ja4s_r: string;
}

/** JA4S and its raw form. Extensions are taken in wire order with nothing removed (servers send no GREASE). */
export function ja4s(sh: ServerHello, transport: Transport = "t", opts: { alpnRule?: AlpnRule } = {}): Ja4s {
  const version = tlsVersionCode(sh.supportedVersion ?? sh.legacyVersion);
  const a = transport + version + count2(sh.extensions.length) + alpnCode(sh.alpn, opts.alpnRule);
  const b = hex4(sh.cipherSuite);
  const raw = joinHex(sh.extensions);
  return { ja4s: a + "_" + b + "_" + hash12(raw), ja4s_r: a + "_" + b + "_" + raw };
}
