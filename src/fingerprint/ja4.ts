/**
 * JA4: TLS client fingerprint from a ClientHello (spec §1). JA4 is BSD 3-Clause (FoxIO).
 */
import type { ClientHello } from "../parse/tls.ts";
import { alpnCode, type AlpnRule, count2, isGrease, joinHex, tlsVersionCode } from "./common.ts";
import { EMPTY12, hash12 } from "./sha.ts";

export type Transport = "t" | "q" | "d";

export interface Ja4 {
  ja4: string;
  ja4_r: string;
  ja4_o: string;
  ja4_ro: string;
}

export interface Ja4Options {
  alpnRule?: AlpnRule;
}

const EXT_SNI = 0x0000;
const EXT_ALPN = 0x0010;

/** Version code: highest non-GREASE supported_versions entry, else legacy_version (never the record version). */
export function ja4Version(ch: ClientHello): string {
  if (ch.supportedVersions !== undefined) {
    let max = -1;
    for (const v of ch.supportedVersions) if (!isGrease(v) && v > max) max = v;
    // Only GREASE listed: the version is unknown (spec §1.3 edge case).
    return max < 0 ? "00" : tlsVersionCode(max);
  }
  return tlsVersionCode(ch.legacyVersion);
}

// Real traffic repeats a few ClientHello shapes (one per client build), and building the four strings (hex
// joins, sorts, four hash lookups keyed by those strings) was the biggest cost of writing a record offline.
// The memo key is every input of the fingerprint, one UTF-16 unit per code with a length before each list:
// cheap to build and unambiguous. Bounded: emptied when full.
const MEMO_MAX = 4096;
/** Hellos with more codes than this are not memoised (the key would cost more than it saves). */
const MEMO_MAX_CODES = 1024;
const memo = new Map<string, Ja4>();

function units(list: ArrayLike<number>): string {
  return String.fromCharCode(list.length) + String.fromCharCode.apply(null, list as number[]);
}

function memoKey(ch: ClientHello, transport: Transport, rule: AlpnRule | undefined): string | undefined {
  const alpn = ch.alpn[0];
  const sv = ch.supportedVersions;
  const n = ch.cipherSuites.length + ch.extensions.length + ch.signatureAlgorithms.length +
    (sv?.length ?? 0) +
    (alpn?.length ?? 0);
  if (n > MEMO_MAX_CODES) return undefined;
  return transport + (rule ?? "-") + String.fromCharCode(ch.legacyVersion) + units(ch.cipherSuites) +
    units(ch.extensions) + units(ch.signatureAlgorithms) + (sv ? units(sv) : "\uffff") +
    (alpn ? units(alpn) : "\uffff");
}

/** Computes all four JA4 variants (memoised per distinct hello; each call gets its own object). */
export function ja4(ch: ClientHello, transport: Transport = "t", opts: Ja4Options = {}): Ja4 {
  const key = memoKey(ch, transport, opts.alpnRule);
  if (key === undefined) return compute(ch, transport, opts);
  let r = memo.get(key);
  if (r === undefined) {
    r = compute(ch, transport, opts);
    if (memo.size >= MEMO_MAX) memo.clear();
    memo.set(key, r);
  }
  return { ja4: r.ja4, ja4_r: r.ja4_r, ja4_o: r.ja4_o, ja4_ro: r.ja4_ro };
}

/** JA4 computed from scratch, bypassing the memo (tests compare the two). */
export function ja4Fresh(ch: ClientHello, transport: Transport = "t", opts: Ja4Options = {}): Ja4 {
  return compute(ch, transport, opts);
}

function compute(ch: ClientHello, transport: Transport, opts: Ja4Options): Ja4 {
  const ciphers: number[] = [];
  for (const c of ch.cipherSuites) if (!isGrease(c)) ciphers.push(c);
  const exts: number[] = [];
  let sni = false;
  for (const e of ch.extensions) {
    if (isGrease(e)) continue;
    exts.push(e);
    if (e === EXT_SNI) sni = true;
  }
  const sigs: number[] = [];
  for (const s of ch.signatureAlgorithms) if (!isGrease(s)) sigs.push(s);

  const a = transport + ja4Version(ch) + (sni ? "d" : "i") + count2(ciphers.length) + count2(exts.length) +
    alpnCode(ch.alpn[0], opts.alpnRule);

  const cipherWire = joinHex(ciphers);
  const cipherSorted = joinHex(ciphers.slice().sort((x, y) => x - y));
  const extFiltered: number[] = [];
  for (const e of exts) if (e !== EXT_SNI && e !== EXT_ALPN) extFiltered.push(e);
  const S = joinHex(sigs);
  const withSigs = (E: string) => (S.length > 0 ? E + "_" + S : E);
  const cSorted = withSigs(joinHex(extFiltered.sort((x, y) => x - y)));
  const cWire = withSigs(joinHex(exts));

  return {
    ja4: a + "_" + hash12(cipherSorted) + "_" + hash12(cSorted),
    ja4_r: a + "_" + cipherSorted + "_" + cSorted,
    // FoxIO's output (vector https3-301-get: SNI is the only extension) keeps c all zeros in the original-order
    // form too when nothing but SNI/ALPN is present, although its raw form lists them.
    ja4_o: a + "_" + hash12(cipherWire) + "_" + (extFiltered.length === 0 ? EMPTY12 : hash12(cWire)),
    ja4_ro: a + "_" + cipherWire + "_" + cWire,
  };
}
