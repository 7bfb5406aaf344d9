/**
 * One row per HTTP request: the shape every sink writes and the ClickHouse table mirrors.
 * Column names equal these field names. Strings are "" where a value is not known yet.
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

/**
 * Rows as JSON lines, each ended by "\n": byte for byte `rows.map(JSON.stringify).join("\n") + "\n"`,
 * built by one concatenation instead of an intermediate array of strings.
 */
export function jsonLines(rows: readonly Row[]): string {
  let s = "";
  // `?? ""`: join() writes nothing for a value JSON.stringify leaves undefined (never a real row).
  for (let i = 0; i < rows.length; i++) s += (JSON.stringify(rows[i]) ?? "") + "\n";
  return s;
}
