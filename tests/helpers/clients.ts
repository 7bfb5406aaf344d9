/**
 * Real clients for the integration tests: curl, raw HTTP/1 over a socket (pipelining, oversized headers),
 * a small-MSS TLS client (python3, TCP_MAXSEG) whose ClientHello spans several segments, headless Chromium
 * with a TLS key log, and wrk. Each can run inside a network namespace (netns.ts) except rawHttp, which uses
 * this process's sockets.
 */
import { delay, HarnessError, makeTempDir, requireTool, run, type RunResult } from "./proc.ts";

/** A namespace name or anything with one (a Netns from netns.ts). */
export type NsRef = string | { name: string };

function nsName(ns?: NsRef): string | undefined {
  return ns === undefined ? undefined : typeof ns === "string" ? ns : ns.name;
}

export interface CurlOptions {
  netns?: NsRef;
  /** Whole-invocation limit; also passed to curl as --max-time. Default 20 s. */
  timeoutMs?: number;
  env?: Record<string, string>;
}

/**
 * Runs curl with `-sS --max-time` prepended to args; stdout/stderr/exit code as they are (exit code 0 does not
 * mean HTTP 200: add `-f` or `-w '%{http_code}'`). Several URLs in one call reuse one connection
 * (`-w '%{num_connects}'` prints 1 then 0). Useful flags: --http1.0, --http1.1, --http2, -k, -b/-c cookies.
 */
export async function curl(args: string[], opts: CurlOptions = {}): Promise<RunResult> {
  const bin = requireTool("curl", "curl");
  const ms = opts.timeoutMs ?? 20_000;
  return await run([bin, "-sS", "--max-time", String(Math.max(1, Math.ceil(ms / 1000))), ...args], {
    netns: nsName(opts.netns),
    env: opts.env,
    timeoutMs: ms + 5000,
  });
}

export interface RawResponse {
  status: number;
  /** "HTTP/1.1" etc. */
  version: string;
  /** Header names lower-cased; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: string;
}

export interface RawHttpResult {
  /** Everything the server sent, as latin-1 text. */
  text: string;
  responses: RawResponse[];
  /** True when the server closed the connection. */
  closed: boolean;
}

/**
 * Parses consecutive HTTP/1.x responses from latin-1 text; stops at the first incomplete one. A response
 * without Content-Length or chunking takes the rest of the text only when `eof` is set.
 */
export function parseResponses(text: string, eof = false): RawResponse[] {
  const out: RawResponse[] = [];
  let pos = 0;
  while (pos < text.length) {
    const end = text.indexOf("\r\n\r\n", pos);
    if (end < 0) break;
    const lines = text.slice(pos, end).split("\r\n");
    const m = /^(HTTP\/\d\.\d) (\d{3})/.exec(lines[0]);
    if (!m) break;
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i <= 0) continue;
      const k = l.slice(0, i).trim().toLowerCase();
      const v = l.slice(i + 1).trim();
      headers[k] = k in headers ? `${headers[k]}, ${v}` : v;
    }
    const status = Number(m[2]);
    let p = end + 4;
    let body: string;
    if (status < 200 || status === 204 || status === 304) {
      body = "";
    } else if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      const parts: string[] = [];
      for (;;) {
        const le = text.indexOf("\r\n", p);
        if (le < 0) return out;
        const size = parseInt(text.slice(p, le), 16);
        if (!Number.isFinite(size)) return out;
        if (size === 0) {
          const te = text.indexOf("\r\n\r\n", le);
          // Only a bare "0\r\n\r\n" is handled when no trailers follow; trailers end with an empty line too.
          if (text.startsWith("\r\n", le + 2)) p = le + 4;
          else if (te >= 0) p = te + 4;
          else return out;
          break;
        }
        if (text.length < le + 2 + size + 2) return out;
        parts.push(text.slice(le + 2, le + 2 + size));
        p = le + 2 + size + 2;
      }
      body = parts.join("");
    } else if (headers["content-length"] !== undefined) {
      const n = Number(headers["content-length"]);
      if (text.length < p + n) break;
      body = text.slice(p, p + n);
      p += n;
    } else {
      if (!eof) break;
      body = text.slice(p);
      p = text.length;
    }
    out.push({ status, version: m[1], headers, body });
    pos = p;
  }
  return out;
}

const latin1 = new TextDecoder("latin1");

/**
 * Opens one TCP connection, writes `bytes` in a single write (so pipelined requests arrive together), and
 * reads until `responses` complete responses arrived (default 1), the server closed, or timeoutMs passed.
 */
export async function rawHttp(
  host: string,
  port: number,
  bytes: string | Uint8Array,
  opts: { responses?: number; timeoutMs?: number } = {},
): Promise<RawHttpResult> {
  const want = opts.responses ?? 1;
  const conn = await Deno.connect({ hostname: host, port });
  const chunks: string[] = [];
  let closed = false;
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, opts.timeoutMs ?? 10_000);
  try {
    const data = typeof bytes === "string" ? Uint8Array.from(bytes, (c) => c.charCodeAt(0) & 0xff) : bytes;
    let off = 0;
    while (off < data.length) off += await conn.write(data.subarray(off));
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) {
        closed = true;
        break;
      }
      chunks.push(latin1.decode(buf.subarray(0, n)));
      if (parseResponses(chunks.join("")).length >= want) break;
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
  const text = chunks.join("");
  return { text, responses: parseResponses(text, closed), closed };
}

/** An HTTP/1.1 request as a string; extra headers appended in order. */
export function httpRequest(
  opts: { method?: string; path?: string; host?: string; version?: string; headers?: [string, string][] } =
    {},
): string {
  const lines = [`${opts.method ?? "GET"} ${opts.path ?? "/"} ${opts.version ?? "HTTP/1.1"}`];
  lines.push(`Host: ${opts.host ?? "localhost"}`);
  for (const [k, v] of opts.headers ?? []) lines.push(`${k}: ${v}`);
  return lines.join("\r\n") + "\r\n\r\n";
}

/** A header whose whole line ("X-Big: aaa…") is `bytes` long, for header-buffer limit tests. */
export function bigHeader(bytes: number, name = "X-Big"): [string, string] {
  return [name, "a".repeat(Math.max(1, bytes - name.length - 2))];
}

export interface SmallMssOptions {
  host: string;
  port: number;
  /** TCP_MAXSEG set before connect(): the SYN advertises it and our segments carry at most this. Default 200. */
  mss?: number;
  netns?: NsRef;
  /** TLS on (default) or plain TCP. */
  tls?: boolean;
  sni?: string;
  /** ALPN list; default ["http/1.1"]. */
  alpn?: string[];
  /** Request to send after the handshake (default a GET / with Connection: close); "" sends nothing. */
  request?: string;
  /** NSS key log for the session (python's ssl keylog_filename). */
  keylogFile?: string;
  timeoutMs?: number;
}

export interface SmallMssResult {
  localPort: number;
  tlsVersion?: string;
  alpn?: string | null;
  /** Raw response text (latin-1) up to the server's close. */
  response: string;
}

const SMALL_MSS_PY = `
import json, socket, ssl, sys
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET6 if ':' in a['host'] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, a['mss'])
s.settimeout(a['timeout'])
s.connect((a['host'], a['port']))
out = {'localPort': s.getsockname()[1]}
if a['tls']:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if a['alpn']:
        ctx.set_alpn_protocols(a['alpn'])
    if a['keylog']:
        ctx.keylog_filename = a['keylog']
    s = ctx.wrap_socket(s, server_hostname=a['sni'])
    out['tlsVersion'] = s.version()
    out['alpn'] = s.selected_alpn_protocol()
data = b''
if a['request']:
    s.sendall(a['request'].encode('latin-1'))
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        data += d
out['response'] = data.decode('latin-1')
print(json.dumps(out))
`;

/** A client whose every segment carries at most `mss` bytes, so its ClientHello spans several segments. */
export async function smallMssClient(opts: SmallMssOptions): Promise<SmallMssResult> {
  const py = requireTool("python3", "python3");
  const mss = opts.mss ?? 200;
  // Linux refuses TCP_MAXSEG below 88 (TCP_MIN_MSS); keep the error ours and clear.
  if (!Number.isInteger(mss) || mss < 88 || mss > 65535) throw new HarnessError(`bad mss ${mss} (88..65535)`);
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const args = {
    host: opts.host,
    port: opts.port,
    mss,
    tls: opts.tls !== false,
    sni: opts.sni ?? "localhost",
    alpn: opts.alpn ?? ["http/1.1"],
    request: opts.request ??
      httpRequest({ host: opts.sni ?? "localhost", headers: [["Connection", "close"]] }),
    keylog: opts.keylogFile ?? "",
    timeout: timeoutMs / 1000,
  };
  const r = await run([py, "-c", SMALL_MSS_PY, JSON.stringify(args)], {
    netns: nsName(opts.netns),
    timeoutMs: timeoutMs + 5000,
  });
  if (r.code !== 0) {
    throw new HarnessError(`small-MSS client failed (exit ${r.code}): ${r.stderr.trim().slice(-1500)}`);
  }
  return JSON.parse(r.stdout) as SmallMssResult;
}

export interface ChromiumOptions {
  url: string;
  netns?: NsRef;
  /** Where Chromium writes the TLS secrets (SSLKEYLOGFILE + --ssl-key-log-file). */
  keylogFile?: string;
  timeoutMs?: number;
  extraArgs?: string[];
}

export interface ChromiumResult {
  code: number;
  /** The serialized DOM of the loaded page (--dump-dom). */
  dom: string;
  stderr: string;
}

/**
 * Headless Debian Chromium loading one URL and dumping its DOM; fresh profile in a temp dir (removed after),
 * no QUIC and no background traffic so the capture holds only the test's connections.
 */
export async function chromium(opts: ChromiumOptions): Promise<ChromiumResult> {
  const bin = requireTool("chromium", "chromium");
  const profile = await makeTempDir("ja4ebpf-chromium-");
  try {
    const args = [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      "--no-default-browser-check",
      `--user-data-dir=${profile}/profile`,
      "--ignore-certificate-errors",
      ...(opts.keylogFile ? [`--ssl-key-log-file=${opts.keylogFile}`] : []),
      ...(opts.extraArgs ?? []),
      "--dump-dom",
      opts.url,
    ];
    const env: Record<string, string> = { HOME: profile };
    if (opts.keylogFile) env.SSLKEYLOGFILE = opts.keylogFile;
    const r = await run([bin, ...args], {
      netns: nsName(opts.netns),
      env,
      timeoutMs: opts.timeoutMs ?? 45_000,
    });
    return { code: r.code, dom: r.stdout, stderr: r.stderr };
  } finally {
    // Chromium's helpers may outlive the browser by a moment and still write into the profile.
    for (let i = 0; i < 5; i++) {
      try {
        await Deno.remove(profile, { recursive: true });
        break;
      } catch {
        await delay(100);
      }
    }
  }
}

export interface WrkOptions {
  url: string;
  connections?: number;
  threads?: number;
  /** Seconds; default 2. */
  duration?: number;
  netns?: NsRef;
  /** Extra request headers, e.g. "Connection: close" (one connection per request). */
  headers?: string[];
  /** wrk only: a Lua script (`-s`), e.g. one whose request() makes each request. */
  script?: string;
}

export interface WrkResult {
  requestsPerSec: number;
  requests: number;
  seconds: number;
  /** "Non-2xx or 3xx responses" (0 when wrk did not print the line). */
  non2xx: number;
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  raw: string;
}

/** Parses wrk's text report; throws when the Requests/sec line is missing. */
export function parseWrk(out: string): WrkResult {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const total = /(\d+) requests in ([\d.]+)(us|ms|s|m)/.exec(out);
  if (!rps || !total) throw new HarnessError(`unexpected wrk output:\n${out.slice(-1500)}`);
  const unit = { us: 1e-6, ms: 1e-3, s: 1, m: 60 }[total[3] as "us" | "ms" | "s" | "m"];
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  return {
    requestsPerSec: Number(rps[1]),
    requests: Number(total[1]),
    seconds: Number(total[2]) * unit,
    non2xx: non ? Number(non[1]) : 0,
    socketErrors: se
      ? { connect: Number(se[1]), read: Number(se[2]), write: Number(se[3]), timeout: Number(se[4]) }
      : { connect: 0, read: 0, write: 0, timeout: 0 },
    raw: out,
  };
}

/**
 * Parses h2load's report (nghttp2) into wrk's figures: "finished in Ns, R req/s", "requests: N total, …, S
 * succeeded", "status codes: A 2xx, B 3xx, …" (non-2xx/3xx = the 4xx and 5xx). Throws without those lines.
 */
export function parseH2load(out: string): WrkResult {
  const fin = /finished in ([\d.]+)(us|ms|s),\s+([\d.]+) req\/s/.exec(out);
  const req =
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/
      .exec(out);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
  if (!fin || !req || !codes) throw new HarnessError(`unexpected h2load output:\n${out.slice(-1500)}`);
  const unit = { us: 1e-6, ms: 1e-3, s: 1 }[fin[2] as "us" | "ms" | "s"];
  return {
    requestsPerSec: Number(fin[3]),
    requests: Number(req[3]),
    seconds: Number(fin[1]) * unit,
    non2xx: Number(codes[3]) + Number(codes[4]),
    socketErrors: { connect: Number(req[6]), read: Number(req[5]), write: 0, timeout: Number(req[7]) },
    raw: out,
  };
}

/** Runs a load generator for `opts`: its binary, its arguments for threads, connections and seconds. */
async function load(
  tool: string,
  pkg: string,
  args: (threads: number, connections: number, seconds: number) => string[],
  parse: (out: string) => WrkResult,
  opts: WrkOptions,
): Promise<WrkResult> {
  const bin = requireTool(tool, pkg);
  const threads = opts.threads ?? 1;
  const connections = Math.max(opts.connections ?? 4, threads);
  const duration = opts.duration ?? 2;
  const r = await run(
    [
      bin,
      ...args(threads, connections, duration),
      ...(opts.headers ?? []).flatMap((h) => ["-H", h]),
      ...(opts.script ? ["-s", opts.script] : []),
      opts.url,
    ],
    { netns: nsName(opts.netns), timeoutMs: duration * 1000 + 15_000 },
  );
  if (r.code !== 0) {
    throw new HarnessError(`${tool} exited ${r.code}: ${(r.stderr || r.stdout).slice(-1500)}`);
  }
  return parse(r.stdout);
}

/**
 * HTTP/2 load (over TLS, as browsers speak it) with nghttp2's h2load: `connections` clients for `duration`
 * seconds, one stream at a time each (as wrk keeps one request in flight per connection).
 */
export function h2load(opts: WrkOptions): Promise<WrkResult> {
  return load(
    "h2load",
    "nghttp2-client",
    (t, c, d) => ["-t", `${t}`, "-c", `${c}`, "-m", "1", "-D", `${d}`],
    parseH2load,
    opts,
  );
}

/**
 * wrk's request() for browser-like load: Chrome's header lines in its order, a session cookie of its own per
 * request (a counter and a random part) and a referer per page.
 */
const BROWSER_LUA = String.raw`
local n = 0
local ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
request = function()
  n = n + 1
  local sid = string.format("%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), n)
  return "GET /shop/items/" .. (n % 500) .. "?ref=home HTTP/1.1\r\n" ..
    "Host: localhost\r\nConnection: close\r\nsec-ch-ua: \"Chromium\";v=\"124\"\r\nsec-ch-ua-mobile: ?0\r\n" ..
    "Upgrade-Insecure-Requests: 1\r\nUser-Agent: " .. ua .. "\r\n" ..
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n" ..
    "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n" ..
    "Referer: http://localhost/shop/page/" .. (n % 97) .. "\r\n" ..
    "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9,de;q=0.7\r\n" ..
    "Cookie: session=" .. sid .. "; theme=dark; consent=1\r\n\r\n"
end
`;
let browserLua: string | undefined;
/** BROWSER_LUA in a file of its own (removed at exit), for WrkOptions.script. */
export async function browserScript(): Promise<string> {
  if (browserLua === undefined) {
    browserLua = await Deno.makeTempFile({ prefix: "ja4ebpf-browser-", suffix: ".lua" });
    await Deno.writeTextFile(browserLua, BROWSER_LUA);
    globalThis.addEventListener("unload", () => Deno.removeSync(browserLua!));
  }
  return browserLua;
}

export function wrk(opts: WrkOptions): Promise<WrkResult> {
  return load(
    "wrk",
    "wrk",
    (t, c, d) => ["-t", `${t}`, "-c", `${c}`, "-d", `${d}s`, "--latency"],
    parseWrk,
    opts,
  );
}
