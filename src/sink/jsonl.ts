/**
 * Rows as JSON lines, encoded straight into one reusable byte buffer: the bytes of
 * `new TextEncoder().encode(jsonLines(rows))` without the per-row strings, the batch string and the UTF-8 copy
 * that way allocates (garbage the collector then pays for at every request). Values that repeat from row to
 * row (addresses, Host, User-Agent, fingerprints) are kept as their quoted UTF-8 bytes; the rest is written
 * byte by byte when it is plain ASCII, and through JSON.stringify + UTF-8 otherwise.
 */
import { jsonString, type Row, userJa4h } from "./row.ts";
import { Slab } from "./slab.ts";

const utf8 = new TextEncoder();
const bytes = (s: string) => utf8.encode(s);

const F_TS = bytes('{"ts":');
const F_HOST = bytes(',"host":');
const F_SERVER = bytes(',"server":');
const F_PID = bytes(',"pid":');
const F_CAPTURE = bytes(',"capture":');
const F_SRC = bytes(',"src":');
const F_SRC_PORT = bytes(',"src_port":');
const F_DST = bytes(',"dst":');
const F_DST_PORT = bytes(',"dst_port":');
const F_METHOD = bytes(',"method":');
const F_PATH = bytes(',"path":');
const F_VERSION = bytes(',"http_version":');
const F_HOST_HEADER = bytes(',"host_header":');
const F_UA = bytes(',"user_agent":');
const F_JA4H = bytes(',"ja4h":');
const F_JA4H_R = bytes(',"ja4h_r":');
const F_JA4H_O = bytes(',"ja4h_o":');
const F_JA4H_RO = bytes(',"ja4h_ro":');
const F_JA4 = bytes(',"ja4":');
const F_JA4_R = bytes(',"ja4_r":');
const F_JA4T = bytes(',"ja4t":');
const F_SNI = bytes(',"tls_server_name":');
const END_TRUE = bytes(',"truncated":true}\n');
const END_FALSE = bytes(',"truncated":false}\n');

/** Quoted values kept at most; the cache starts over when full (values that repeat come back at once). */
const CACHE_ENTRIES = 8192;
/** Longer values are not kept (a User-Agent is ~100–300 bytes; this bounds the cache to a few MiB). */
const CACHE_MAX_CHARS = 512;
/** Room every row may need beyond its strings' bytes: names, numbers, punctuation. */
const ROW_FIXED = 512;

/** Tails longer than this are encoded every time (a raw JA4H with many cookies, a huge User-Agent). */
const TAIL_MAX_BYTES = 2048;
/** User-Agents kept at most: the memo starts over past it (a working set refills). */
const TAIL_ENTRIES = 1024;
/** Tails per User-Agent. */
const TAIL_WAYS = 4;

/** A row's fields after `path` (but the User-Agent, its key), and their bytes (a view of the slab). */
type Tail =
  & Pick<
    Row,
    | "ja4h"
    | "http_version"
    | "host_header"
    | "ja4h_r"
    | "ja4h_o"
    | "ja4h_ro"
    | "ja4"
    | "ja4_r"
    | "ja4t"
    | "tls_server_name"
    | "truncated"
  >
  & {
    bytes: Uint8Array;
    /**
     * A user's tail (its JA4H hashes a Cookie, see userJa4h): it serves every row whose other fields match,
     * whatever its JA4H: `bytes` end before the JA4H value, which is written out, and `rest` follows it.
     */
    user: boolean;
    rest: Uint8Array;
  };

const NO_BYTES = new Uint8Array(0);
/** #field call sites (each passes its own slot number). */
const FIELD_SLOTS = 14;
/** Room for the memos' bytes (src/sink/slab.ts). */
const SLAB_BYTES = 2 * 1024 * 1024;

export class JsonLinesEncoder {
  #buf: Uint8Array;
  #pos = 0;
  #quoted = new Map<string, Uint8Array>();
  #tails = new Map<string, Tail[]>();
  /** Per #field slot: the value last written there (undefined: none yet) and its quoted bytes. */
  #lastValue: (string | undefined)[] = new Array(FIELD_SLOTS).fill(undefined);
  #lastQuoted: Uint8Array[] = new Array(FIELD_SLOTS).fill(NO_BYTES);
  #slab: Slab;
  /** Where #tailFields wrote a user's JA4H value: [from, to) of #buf. */
  #ja4hFrom = 0;
  #ja4hTo = 0;

  /** `slabBytes`: room for the memos' bytes (tests make it small to see the memos start over). */
  constructor(initialBytes = 64 * 1024, slabBytes = SLAB_BYTES) {
    this.#buf = new Uint8Array(initialBytes);
    this.#slab = new Slab(slabBytes, () => {
      this.#quoted.clear();
      this.#tails.clear();
      this.#lastValue.fill(undefined);
      this.#lastQuoted.fill(NO_BYTES);
    });
  }

  /** The rows' JSON lines; a view into the encoder's buffer, valid until the next call. */
  encode(rows: readonly Row[]): Uint8Array {
    this.#pos = 0;
    for (let i = 0; i < rows.length; i++) this.#row(rows[i]);
    return this.#buf.subarray(0, this.#pos);
  }

  /** One row, fields in ROW_FIELDS order, absent strings left out (as rowJson). */
  #row(r: Row): void {
    // Worst case per UTF-16 unit: 6 bytes ("\uXXXX"); checked once per row, so no write below checks.
    this.#room(
      ROW_FIXED + 6 * (r.ts.length + r.host.length + r.server.length + r.capture.length + r.src.length +
            r.dst.length + r.method.length + r.path.length + r.http_version.length + r.host_header.length +
            r.user_agent.length + r.ja4h.length + r.ja4h_r.length + r.ja4h_o.length + r.ja4h_ro.length +
            r.ja4.length + r.ja4_r.length + r.ja4t.length + r.tls_server_name.length),
    );
    this.#put(F_TS);
    this.#str(r.ts);
    if (r.host !== "") this.#field(0, F_HOST, r.host);
    if (r.server !== "") this.#field(1, F_SERVER, r.server);
    this.#put(F_PID);
    this.#num(r.pid);
    if (r.capture !== "") this.#field(2, F_CAPTURE, r.capture);
    if (r.src !== "") {
      // Written out, not cached: on a busy server most connections come from an address not seen in a
      // while (a cache entry per client would be garbage).
      this.#put(F_SRC);
      this.#str(r.src);
    }
    this.#put(F_SRC_PORT);
    this.#num(r.src_port);
    if (r.dst !== "") this.#field(4, F_DST, r.dst);
    this.#put(F_DST_PORT);
    this.#num(r.dst_port);
    if (r.method !== "") this.#field(5, F_METHOD, r.method);
    if (r.path !== "") {
      this.#put(F_PATH);
      this.#str(r.path);
    }
    this.#tail(r);
  }

  /**
   * Everything after the path: the same for every request of a keep-alive connection, and for every client of
   * one build on one site. Up to TAIL_WAYS tails are kept per User-Agent (one build sends a few header sets:
   * with and without a cookie, a referer, another method), each with its values; a row whose values are all
   * the same (=== on each: the rows share the strings of one header block and one connection) gets its bytes
   * in one copy instead of a dozen lookups. Keyed by User-Agent, not JA4H: many builds share one JA4H. A
   * user's JA4H (cookies) is each user's own: a user's tail matches on the other fields, its JA4H written out.
   */
  #tail(r: Row): void {
    const user = userJa4h(r.ja4h);
    let ways = this.#tails.get(r.user_agent);
    if (ways !== undefined) {
      for (let i = 0; i < ways.length; i++) {
        const t = ways[i];
        if (
          t.user === user && (user || t.ja4h === r.ja4h) && t.http_version === r.http_version &&
          t.host_header === r.host_header && t.ja4h_r === r.ja4h_r && t.ja4h_o === r.ja4h_o &&
          t.ja4h_ro === r.ja4h_ro && t.ja4 === r.ja4 && t.ja4_r === r.ja4_r && t.ja4t === r.ja4t &&
          t.tls_server_name === r.tls_server_name && t.truncated === r.truncated
        ) {
          this.#put(t.bytes);
          if (user) {
            this.#str(r.ja4h);
            this.#put(t.rest);
          }
          return;
        }
      }
    }
    const from = this.#pos;
    this.#tailFields(r);
    const n = this.#pos - from;
    if (n > TAIL_MAX_BYTES) return;
    // A user's tail is kept without its JA4H value: the bytes before it and after it, in one piece of the slab.
    const cut = user ? this.#ja4hTo - this.#ja4hFrom : 0;
    const kept = this.#slab.reserve(n - cut);
    if (kept === undefined) return;
    const head = user ? this.#ja4hFrom - from : n;
    kept.set(this.#buf.subarray(from, from + head));
    if (user) kept.set(this.#buf.subarray(this.#ja4hTo, this.#pos), head);
    const bytes = user ? kept.subarray(0, head) : kept;
    const rest = user ? kept.subarray(head) : NO_BYTES;
    // Looked up again: the slab may have started over, and every memo with it.
    ways = this.#tails.get(r.user_agent);
    if (ways === undefined) {
      if (this.#tails.size >= TAIL_ENTRIES) this.#tails.clear();
      ways = [];
      this.#tails.set(r.user_agent, ways);
    }
    let t: Tail;
    if (ways.length < TAIL_WAYS) {
      t = {
        ja4h: r.ja4h,
        http_version: r.http_version,
        host_header: r.host_header,
        ja4h_r: r.ja4h_r,
        ja4h_o: r.ja4h_o,
        ja4h_ro: r.ja4h_ro,
        ja4: r.ja4,
        ja4_r: r.ja4_r,
        ja4t: r.ja4t,
        tls_server_name: r.tls_server_name,
        truncated: r.truncated,
        bytes,
        user,
        rest,
      };
      ways.push(t);
    } else {
      // All ways taken: replace the oldest, in place.
      t = ways[0];
      ways.copyWithin(0, 1);
      ways[TAIL_WAYS - 1] = t;
      this.#fillTail(t, r);
      t.bytes = bytes;
      t.user = user;
      t.rest = rest;
    }
  }

  #fillTail(t: Tail, r: Row): void {
    t.ja4h = r.ja4h;
    t.http_version = r.http_version;
    t.host_header = r.host_header;
    t.ja4h_r = r.ja4h_r;
    t.ja4h_o = r.ja4h_o;
    t.ja4h_ro = r.ja4h_ro;
    t.ja4 = r.ja4;
    t.ja4_r = r.ja4_r;
    t.ja4t = r.ja4t;
    t.tls_server_name = r.tls_server_name;
    t.truncated = r.truncated;
  }

  #tailFields(r: Row): void {
    if (r.http_version !== "") this.#field(6, F_VERSION, r.http_version);
    if (r.host_header !== "") this.#field(7, F_HOST_HEADER, r.host_header);
    if (r.user_agent !== "") this.#field(8, F_UA, r.user_agent);
    if (userJa4h(r.ja4h)) {
      // A user's own: written out, not cached; where its value lies is kept for #tail.
      this.#put(F_JA4H);
      this.#ja4hFrom = this.#pos;
      this.#str(r.ja4h);
      this.#ja4hTo = this.#pos;
    } else if (r.ja4h !== "") this.#field(9, F_JA4H, r.ja4h);
    if (r.ja4h_r !== "") {
      this.#put(F_JA4H_R);
      this.#str(r.ja4h_r);
    }
    if (r.ja4h_o !== "") {
      this.#put(F_JA4H_O);
      this.#str(r.ja4h_o);
    }
    if (r.ja4h_ro !== "") {
      this.#put(F_JA4H_RO);
      this.#str(r.ja4h_ro);
    }
    if (r.ja4 !== "") this.#field(10, F_JA4, r.ja4);
    if (r.ja4_r !== "") this.#field(11, F_JA4_R, r.ja4_r);
    if (r.ja4t !== "") this.#field(12, F_JA4T, r.ja4t);
    if (r.tls_server_name !== "") this.#field(13, F_SNI, r.tls_server_name);
    this.#put(r.truncated ? END_TRUE : END_FALSE);
  }

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const grown = new Uint8Array(Math.max(this.#buf.length * 2, this.#pos + n));
    grown.set(this.#buf.subarray(0, this.#pos));
    this.#buf = grown;
  }

  #put(b: Uint8Array): void {
    const buf = this.#buf, n = b.length;
    const p = this.#pos;
    // A call into the native copy costs more than a short loop.
    if (n > 16) buf.set(b, p);
    else for (let i = 0; i < n; i++) buf[p + i] = b[i];
    this.#pos = p + n;
  }

  /**
   * A repeating value: its quoted bytes, kept per field (`slot`) for the value last written there (one
   * comparison when a value repeats, as host, server and method nearly always do), else from the cache.
   */
  #field(slot: number, name: Uint8Array, s: string): void {
    this.#put(name);
    if (s === this.#lastValue[slot]) return this.#put(this.#lastQuoted[slot]);
    if (s.length > CACHE_MAX_CHARS) return this.#str(s);
    const q = this.#quoted.get(s);
    if (q === undefined) {
      if (this.#quoted.size >= CACHE_ENTRIES) this.#quoted.clear();
      // Quoted straight into the row buffer, then kept: a copy in the slab.
      const from = this.#pos;
      this.#str(s);
      const kept = this.#slab.keep(this.#buf.subarray(from, this.#pos));
      if (kept === undefined) return;
      this.#quoted.set(s, kept);
      this.#lastValue[slot] = s;
      this.#lastQuoted[slot] = kept;
      return;
    }
    this.#put(q);
    this.#lastValue[slot] = s;
    this.#lastQuoted[slot] = q;
  }

  /** A JSON string literal: plain printable ASCII byte by byte, anything else as JSON.stringify + UTF-8. */
  #str(s: string): void {
    const buf = this.#buf, n = s.length;
    const p = this.#pos;
    buf[p] = 0x22;
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x20 || c === 0x22 || c === 0x5c || c > 0x7e) {
        // The room reserved for the row covers the worst case of the slow path too.
        this.#pos = p + utf8.encodeInto(jsonString(s), buf.subarray(p)).written;
        return;
      }
      buf[p + 1 + i] = c;
    }
    buf[p + 1 + n] = 0x22;
    this.#pos = p + n + 2;
  }

  /** A number as JSON writes it: digits for a non-negative 31-bit integer (int32 division), String() otherwise. */
  #num(v: number): void {
    if (!(v >= 0 && (v | 0) === v)) {
      this.#put(utf8.encode(String(v)));
      return;
    }
    const buf = this.#buf;
    const digits = v < 10
      ? 1
      : v < 100
      ? 2
      : v < 1000
      ? 3
      : v < 10000
      ? 4
      : v < 100000
      ? 5
      : v < 1000000
      ? 6
      : v < 10000000
      ? 7
      : v < 100000000
      ? 8
      : v < 1000000000
      ? 9
      : 10;
    let p = this.#pos + digits;
    this.#pos = p;
    do {
      const q = (v / 10) | 0;
      buf[--p] = 0x30 + v - q * 10;
      v = q;
    } while (v > 0);
  }
}
