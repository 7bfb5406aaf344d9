/**
 * The privacy filter, applied to every row before any sink. Rows carry no header values except host and
 * user_agent (never Cookie/Authorization); this blanks the raw JA4H forms (they carry cookie values), strips
 * the query string from path, and optionally replaces client IPs by a keyed hash.
 */
import { createHmac } from "node:crypto";
import type { Config } from "../config/config.ts";
import type { Row } from "./row.ts";

export type PrivacyOptions = Config["privacy"];

export class Redactor {
  #opts: PrivacyOptions;
  #key: Uint8Array | undefined;

  /** `ipKey` is required when anonymize_ip is on (see loadIpKey). */
  constructor(opts: PrivacyOptions, ipKey?: Uint8Array) {
    if (opts.anonymize_ip && (!ipKey || ipKey.length < 16)) {
      throw new Error("privacy.anonymize_ip needs a key of at least 16 bytes");
    }
    this.#opts = { ...opts };
    this.#key = ipKey;
  }

  /** Returns a filtered copy; the input row is not modified. */
  apply(row: Row): Row {
    return this.#filter({ ...row });
  }

  /**
   * Filters rows in place (no copy per row): the agent's rows belong to the outputs once written, so the
   * per-request path allocates nothing here.
   */
  applyInPlace(rows: Row[]): Row[] {
    for (let i = 0; i < rows.length; i++) this.#filter(rows[i]);
    return rows;
  }

  #filter(r: Row): Row {
    if (!this.#opts.ship_raw_ja4h) {
      r.ja4h_r = "";
      r.ja4h_o = "";
      r.ja4h_ro = "";
    }
    if (this.#opts.strip_query) r.path = stripQuery(r.path);
    if (this.#opts.anonymize_ip && this.#key && r.src) r.src = hmacIp(this.#key, r.src);
    return r;
  }

  applyAll(rows: Row[]): Row[] {
    return rows.map((r) => this.apply(r));
  }
}

export function stripQuery(path: string): string {
  // Two native scans instead of a regex search (which allocates its match state).
  const q = path.indexOf("?"), h = path.indexOf("#");
  const cut = q < 0 ? h : h < 0 || q < h ? q : h;
  return cut < 0 ? path : path.slice(0, cut);
}

/**
 * HMAC-SHA-256 of the address, shaped as an IPv6 address in fd00::/8 (unique-local): the value stays a valid
 * IP for IPv6 columns, is stable per host key (counting distinct clients still works) and is never routable.
 */
export function hmacIp(key: Uint8Array, ip: string): string {
  const h = createHmac("sha256", key).update(ip).digest();
  h[0] = 0xfd;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((h[i] << 8) | h[i + 1]).toString(16));
  return groups.join(":");
}

/** Reads the host-local IP key, creating 32 random bytes at mode 0600 when the file does not exist. */
export async function loadIpKey(path: string): Promise<Uint8Array> {
  try {
    const k = await Deno.readFile(path);
    if (k.length < 16) throw new Error(`${path}: IP key shorter than 16 bytes`);
    return k;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const k = crypto.getRandomValues(new Uint8Array(32));
  await Deno.writeFile(path, k, { mode: 0o600, createNew: true });
  return k;
}
