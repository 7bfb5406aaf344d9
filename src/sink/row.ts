/**
 * One row per HTTP request: the one type that carries a request from the request tracker through the
 * correlator to every sink, and the shape the ClickHouse table mirrors. Column names equal these field names.
 * In memory a string is "" where the value is absent (not known, or not applicable); sinks do not write
 * absent values at all (see rowJson), so a consumer never sees "" standing for "unknown".
 */
export interface Row {
  /** Request time, ISO-8601 UTC with milliseconds. */
  ts: string;
  host: string;
  server: "nginx" | "apache" | string;
  pid: number;
  /** The capture method that saw the request: tracepoint, kretprobe, fexit, raw_tp, uprobe, ssl_uprobe, pcap. */
  capture: string;
  src: string;
  src_port: number;
  dst: string;
  dst_port: number;
  method: string;
  path: string;
  /** "10", "11" or "20" (h2), as in JA4H. */
  http_version: string;
  host_header: string;
  user_agent: string;
  ja4h: string;
  /** Raw JA4H forms carry cookie values: filled only when privacy.ship_raw_ja4h is on. */
  ja4h_r: string;
  ja4h_o: string;
  ja4h_ro: string;
  ja4: string;
  ja4_r: string;
  ja4t: string;
  tls_server_name: string;
  /** The head was larger than the capture limit: header-derived fields may be incomplete. */
  truncated: boolean;
}

/**
 * A TCP connection as the server sees it: client (src) and server (dst). The same field names as the row's,
 * so a row carries its connection and every stage speaks of connections in one vocabulary.
 */
export type Tuple = Pick<Row, "src" | "src_port" | "dst" | "dst_port">;

export const ROW_FIELDS: readonly (keyof Row)[] = [
  "ts",
  "host",
  "server",
  "pid",
  "capture",
  "src",
  "src_port",
  "dst",
  "dst_port",
  "method",
  "path",
  "http_version",
  "host_header",
  "user_agent",
  "ja4h",
  "ja4h_r",
  "ja4h_o",
  "ja4h_ro",
  "ja4",
  "ja4_r",
  "ja4t",
  "tls_server_name",
  "truncated",
];

const EPOCH = new Date(0).toISOString();

export function emptyRow(): Row {
  return {
    ts: EPOCH,
    host: "",
    server: "",
    pid: 0,
    capture: "",
    src: "",
    src_port: 0,
    dst: "",
    dst_port: 0,
    method: "",
    path: "",
    http_version: "",
    host_header: "",
    user_agent: "",
    ja4h: "",
    ja4h_r: "",
    ja4h_o: "",
    ja4h_ro: "",
    ja4: "",
    ja4_r: "",
    ja4t: "",
    tls_server_name: "",
    truncated: false,
  };
}

/** Characters JSON.stringify would escape: quote, backslash, controls, and (lone) surrogates. */
// deno-lint-ignore no-control-regex -- control characters are exactly what JSON must escape
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/**
 * Is this JA4H a user's own: its c and d parts hash a Cookie (the fifth character, JA4H's cookie flag, is "c")?
 * Such a value seldom comes again on another connection, so the encoders write it out instead of keeping its
 * bytes in their caches (where each would only push out a value that does repeat).
 */
export function userJa4h(ja4h: string): boolean {
  return ja4h.charCodeAt(4) === 0x63;
}

/** A JSON string literal, equal to JSON.stringify(s), without the call for the common plain string. */
export function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

/**
 * jsonString for values that repeat from row to row (addresses, Host, User-Agent, fingerprints): the literal
 * is kept by value. The same string object (a cached header block's User-Agent, a connection's JA4) hashes
 * once, so this is a lookup instead of a scan and a concatenation. Bounded: starts over when full.
 */
const QUOTED = new Map<string, string>();
export function jsonStringCached(s: string): string {
  let q = QUOTED.get(s);
  if (q === undefined) {
    if (QUOTED.size >= 8192) QUOTED.clear();
    q = jsonString(s);
    QUOTED.set(s, q);
  }
  return q;
}

/**
 * One row as a JSON object, fields in ROW_FIELDS order, absent (empty) strings left out. Unrolled: one string
 * built by concatenation, no intermediate object or array (this runs once per request).
 */
export function rowJson(r: Row): string {
  return '{"ts":' + jsonString(r.ts) + rowFieldsJson(r, r.src, r.dst) +
    (r.truncated ? ',"truncated":true}' : ',"truncated":false}');
}

/**
 * The fields between `ts` and `truncated` as `,"name":value` pairs, absent strings left out: shared by every
 * sink's encoding (ClickHouse writes its own time columns and addresses around it).
 */
export function rowFieldsJson(r: Row, src: string, dst: string): string {
  let s = "";
  if (r.host !== "") s += ',"host":' + jsonStringCached(r.host);
  if (r.server !== "") s += ',"server":' + jsonStringCached(r.server);
  s += ',"pid":' + r.pid;
  if (r.capture !== "") s += ',"capture":' + jsonStringCached(r.capture);
  if (src !== "") s += ',"src":' + jsonStringCached(src);
  s += ',"src_port":' + r.src_port;
  if (dst !== "") s += ',"dst":' + jsonStringCached(dst);
  s += ',"dst_port":' + r.dst_port;
  if (r.method !== "") s += ',"method":' + jsonStringCached(r.method);
  if (r.path !== "") s += ',"path":' + jsonString(r.path);
  if (r.http_version !== "") s += ',"http_version":' + jsonStringCached(r.http_version);
  if (r.host_header !== "") s += ',"host_header":' + jsonStringCached(r.host_header);
  if (r.user_agent !== "") s += ',"user_agent":' + jsonStringCached(r.user_agent);
  if (r.ja4h !== "") s += ',"ja4h":' + jsonStringCached(r.ja4h);
  if (r.ja4h_r !== "") s += ',"ja4h_r":' + jsonString(r.ja4h_r);
  if (r.ja4h_o !== "") s += ',"ja4h_o":' + jsonString(r.ja4h_o);
  if (r.ja4h_ro !== "") s += ',"ja4h_ro":' + jsonString(r.ja4h_ro);
  if (r.ja4 !== "") s += ',"ja4":' + jsonStringCached(r.ja4);
  if (r.ja4_r !== "") s += ',"ja4_r":' + jsonStringCached(r.ja4_r);
  if (r.ja4t !== "") s += ',"ja4t":' + jsonStringCached(r.ja4t);
  if (r.tls_server_name !== "") s += ',"tls_server_name":' + jsonStringCached(r.tls_server_name);
  return s;
}

/** A row read back from JSON (a line this agent wrote): absent strings become "". */
export function rowFromJson(o: Record<string, unknown>): Row {
  const r = emptyRow();
  for (const k of ROW_FIELDS) {
    const v = o[k];
    if (v !== undefined && v !== null) (r as unknown as Record<string, unknown>)[k] = v;
  }
  return r;
}

/** Rows as JSON lines, each ended by "\n" (rowJson per row). */
export function jsonLines(rows: readonly Row[]): string {
  let s = "";
  for (let i = 0; i < rows.length; i++) s += rowJson(rows[i]) + "\n";
  return s;
}
