/**
 * Debian's nginx and Apache started for a test with their own config, prefix, logs and pid files in a temp
 * dir, on the ports the caller passes. Real master + worker processes (what the agent attaches to).
 * close() / `await using` kills everything and removes the temp dir, also when the test failed.
 */
import { makeCert, type TlsCert } from "./certs.ts";
import {
  alive,
  childPids,
  cmdline,
  HarnessError,
  isRoot,
  makeTempDir,
  requirePortsFree,
  requireTool,
  stopChild,
  tail,
  waitForPort,
  waitUntil,
} from "./proc.ts";

/** One access-log line, the same fields for both servers. */
export interface AccessEntry {
  remoteAddr: string;
  remotePort: number;
  serverPort: number;
  /** 1-based index of this request on its connection (nginx $connection_requests, Apache %k + 1). */
  connRequests: number;
  status: number;
  bytes: number;
  /** The request line, e.g. "GET / HTTP/1.1" (HTTP/2 shows "GET / HTTP/2.0"). */
  request: string;
  /** TLS protocol ("TLSv1.3") or "" for plain HTTP. */
  tls: string;
  userAgent: string;
}

export interface ServerPids {
  master: number;
  /** Current-generation workers (nginx workers that are "shutting down" after a reload are left out). */
  workers: number[];
}

export interface WebServer extends AsyncDisposable {
  kind: "nginx" | "apache";
  dir: string;
  confPath: string;
  accessLogPath: string;
  errorLogPath: string;
  /** Address clients should connect to (the first listen host; 127.0.0.1 for 0.0.0.0). */
  host: string;
  port: number;
  tlsPort?: number;
  /** http://host:port/ */
  url: string;
  /** https://host:tlsPort/ when TLS is on. */
  tlsUrl?: string;
  /** Body served with 200 at "/". */
  body: string;
  cert?: TlsCert;
  pids(): ServerPids;
  /** nginx: SIGHUP; Apache: SIGUSR1 (graceful). Resolves with the new worker pids once none of the old remain. */
  reload(): Promise<number[]>;
  accessLog(): Promise<AccessEntry[]>;
  /** Polls the access log until it holds at least n lines (logs are written after the response). */
  waitForRequests(n: number, timeoutMs?: number): Promise<AccessEntry[]>;
  close(): Promise<void>;
}

export interface ServerOptions {
  /** Plain HTTP port (required: tests use their assigned ports). */
  port: number;
  /** TLS port (HTTP/2 + HTTP/1.1 via ALPN); off when absent. */
  tlsPort?: number;
  /** Addresses to listen on; default ["127.0.0.1"]. */
  hosts?: string[];
  /** Worker processes; default 2. */
  workers?: number;
  /** Requests per keep-alive connection (nginx keepalive_requests, Apache MaxKeepAliveRequests); default 1000. */
  keepaliveRequests?: number;
  /** Keep-alive idle timeout in seconds; default 15. */
  keepaliveTimeout?: number;
  /** Body for "/"; default "ok\n". */
  body?: string;
  /** Certificate to use; by default a self-signed one is made (removed on close). */
  cert?: TlsCert;
  /** HTTP/2 on the TLS port; default true. */
  http2?: boolean;
  /**
   * nginx ssl_protocols; default "TLSv1.2 TLSv1.3" (nginx 1.22's built-in default lacks TLSv1.3, Debian's
   * shipped nginx.conf adds it). Apache uses mod_ssl's default (TLS 1.2 + 1.3).
   */
  tlsProtocols?: string;
  /** Raw config appended inside nginx's server {} / Apache's top level. */
  extraConfig?: string;
  /** Milliseconds to wait for the ports to answer; default 15000. */
  startTimeoutMs?: number;
}

const QUOTED = String.raw`"((?:[^"\\]|\\.)*)"`;
const LINE_RE = new RegExp(
  String.raw`^(\S+) (\d+) (\d+) (\d+) (\d+) (\d+) ${QUOTED} ${QUOTED} ${QUOTED}$`,
);

function unescapeLog(s: string): string {
  return s.replace(/\\x([0-9A-Fa-f]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)))
    .replace(/\\(.)/g, "$1");
}

/** Parses the access log both servers write (see the log formats below); unparsable lines are skipped. */
export function parseAccessLog(text: string, connRequestsBase: 0 | 1): AccessEntry[] {
  const out: AccessEntry[] = [];
  for (const line of text.split("\n")) {
    const m = LINE_RE.exec(line);
    if (!m) continue;
    const tls = unescapeLog(m[8]);
    out.push({
      remoteAddr: m[1],
      remotePort: Number(m[2]),
      serverPort: Number(m[3]),
      connRequests: Number(m[4]) + (1 - connRequestsBase),
      status: Number(m[5]),
      bytes: Number(m[6]),
      request: unescapeLog(m[7]),
      tls: tls === "-" ? "" : tls,
      userAgent: unescapeLog(m[9]),
    });
  }
  return out;
}

function connectHost(h: string): string {
  return h === "0.0.0.0" ? "127.0.0.1" : h === "::" ? "::1" : h;
}

function hostPort(h: string, p: number): string {
  return h.includes(":") ? `[${h}]:${p}` : `${h}:${p}`;
}

function checkOpts(opts: ServerOptions): { hosts: string[]; workers: number; body: string } {
  const hosts = opts.hosts ?? ["127.0.0.1"];
  const workers = opts.workers ?? 2;
  const body = opts.body ?? "ok\n";
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) {
    throw new HarnessError(`bad workers ${workers}`);
  }
  for (const p of [opts.port, opts.tlsPort ?? 1]) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new HarnessError(`bad port ${p}`);
  }
  if (hosts.length === 0 || hosts.some((h) => !/^[0-9A-Fa-f.:]+$/.test(h))) {
    throw new HarnessError(`bad hosts ${JSON.stringify(hosts)} (IP literals only)`);
  }
  return { hosts, workers, body };
}

function nginxConf(
  dir: string,
  o: ServerOptions,
  hosts: string[],
  workers: number,
  body: string,
  cert?: TlsCert,
) {
  const listen = hosts.map((h) => `    listen ${hostPort(h, o.port)};`);
  if (o.tlsPort !== undefined) {
    for (const h of hosts) {
      listen.push(`    listen ${hostPort(h, o.tlsPort)} ssl${o.http2 === false ? "" : " http2"};`);
    }
  }
  // JSON string escaping is valid inside nginx double quotes for printable bodies.
  const ret = JSON.stringify(body).replaceAll("$", "\\$");
  return `# generated by tests/helpers/servers.ts
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 1024; }
http {
  log_format ja4 '$remote_addr $remote_port $server_port $connection_requests $status $body_bytes_sent '
                 '"$request" "$ssl_protocol" "$http_user_agent"';
  access_log ${dir}/access.log ja4;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  default_type text/plain;
  keepalive_requests ${o.keepaliveRequests ?? 1000};
  keepalive_timeout ${o.keepaliveTimeout ?? 15}s;
  # Debian's (and upstream's) defaults, spelled out: a request line or header field over 8k gets 400.
  client_header_buffer_size 1k;
  large_client_header_buffers 4 8k;
  server {
${listen.join("\n")}
    server_name localhost;
${cert ? `    ssl_certificate ${cert.certPath};\n    ssl_certificate_key ${cert.keyPath};` : ""}
    ssl_protocols ${o.tlsProtocols ?? "TLSv1.2 TLSv1.3"};
    location / { return 200 ${ret}; }
${o.extraConfig ?? ""}
  }
}
`;
}

/** The access-log half of a WebServer: both servers write the same format ($connection_requests base differs). */
function accessLogReader(
  path: string,
  connRequestsBase: 0 | 1,
): Pick<WebServer, "accessLog" | "waitForRequests"> {
  const accessLog = async () =>
    parseAccessLog(await Deno.readTextFile(path).catch(() => ""), connRequestsBase);
  return {
    accessLog,
    async waitForRequests(n, timeoutMs = 5000) {
      let got: AccessEntry[] = [];
      await waitUntil(async () => (got = await accessLog()).length >= n, timeoutMs, `${n} access-log lines`);
      return got;
    },
  };
}

/** nginx's current-generation workers: children of the master titled exactly "nginx: worker process". */
function nginxWorkers(master: number): number[] {
  return childPids(master).filter((p) => cmdline(p) === "nginx: worker process");
}

/**
 * The set-up both servers share: their ports checked free, a temporary home directory, and close(), which
 * stops the child (once `child` is set) and removes the certificate made here and the directory.
 */
async function serverHome(prefix: string, opts: ServerOptions, hosts: string[], stopMs: number) {
  const ports = [opts.port, ...(opts.tlsPort === undefined ? [] : [opts.tlsPort])];
  for (const h of hosts) requirePortsFree(ports, h);
  const dir = await makeTempDir(prefix);
  const ownCert = opts.tlsPort !== undefined && !opts.cert;
  const home = {
    dir,
    ports,
    child: undefined as Deno.ChildProcess | undefined,
    cert: opts.cert,
    /** Makes the server's own certificate when TLS is on and the caller gave none. */
    async makeCert(): Promise<void> {
      if (ownCert) home.cert = await makeCert({ dir: await Deno.makeTempDir({ dir, prefix: "cert-" }) });
    },
    async close(): Promise<void> {
      if (home.child) await stopChild(home.child, "SIGTERM", stopMs);
      home.child = undefined;
      if (ownCert) await home.cert?.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
  return home;
}

/** Waits until the server listens on every host and port, or fails with `why` (its error log). */
async function waitListening(
  hosts: string[],
  ports: number[],
  opts: ServerOptions,
  child: Deno.ChildProcess,
  why: () => Promise<string>,
): Promise<void> {
  for (const h of hosts) {
    for (const p of ports) {
      await waitForPort(connectHost(h), p, {
        timeoutMs: opts.startTimeoutMs ?? 15_000,
        exited: child.status,
        why,
      });
    }
  }
}

/** The WebServer fields both servers fill the same way. */
function serverFields(dir: string, confPath: string, opts: ServerOptions, hosts: string[], body: string) {
  const host = connectHost(hosts[0]);
  return {
    dir,
    confPath,
    accessLogPath: `${dir}/access.log`,
    errorLogPath: `${dir}/error.log`,
    host,
    port: opts.port,
    tlsPort: opts.tlsPort,
    url: `http://${hostPort(host, opts.port)}/`,
    tlsUrl: opts.tlsPort === undefined ? undefined : `https://${hostPort(host, opts.tlsPort)}/`,
    body,
  };
}

export async function startNginx(opts: ServerOptions): Promise<WebServer> {
  const bin = requireTool("nginx", "nginx-light");
  const { hosts, workers, body } = checkOpts(opts);
  const home = await serverHome("ja4ebpf-nginx-", opts, hosts, 5000);
  const { dir, ports, close } = home;
  try {
    await Deno.mkdir(`${dir}/tmp`);
    await Deno.mkdir(`${dir}/logs`); // nginx insists on PREFIX/logs existing
    await home.makeCert();
    const cert = home.cert;
    const confPath = `${dir}/nginx.conf`;
    await Deno.writeTextFile(confPath, nginxConf(dir, opts, hosts, workers, body, cert));
    const test = await new Deno.Command(bin, {
      args: ["-t", "-q", "-p", dir, "-e", `${dir}/error.log`, "-c", confPath],
    })
      .output();
    if (!test.success) {
      throw new HarnessError(`nginx -t rejected the config:\n${new TextDecoder().decode(test.stderr)}`);
    }
    const c = home.child = new Deno.Command(bin, {
      args: ["-p", dir, "-e", `${dir}/error.log`, "-c", confPath, "-g", "daemon off;"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const why = () => tail(`${dir}/error.log`);
    await waitListening(hosts, ports, opts, c, why);
    await waitUntil(() => nginxWorkers(c.pid).length === workers, 10_000, `nginx: ${workers} workers`);
    const pids = (): ServerPids => ({ master: c.pid, workers: nginxWorkers(c.pid) });
    return {
      kind: "nginx",
      ...serverFields(dir, confPath, opts, hosts, body),
      cert,
      pids,
      async reload() {
        const old = new Set(nginxWorkers(c.pid));
        Deno.kill(c.pid, "SIGHUP");
        let now: number[] = [];
        await waitUntil(
          () => {
            now = nginxWorkers(c.pid);
            return now.length === workers && now.every((p) => !old.has(p));
          },
          15_000,
          `nginx reload: new workers replacing ${[...old].join(",")}`,
          why,
        );
        return now;
      },
      ...accessLogReader(`${dir}/access.log`, 1),
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

const APACHE_MODULES = "/usr/lib/apache2/modules";

function apacheConf(
  dir: string,
  o: ServerOptions,
  hosts: string[],
  workers: number,
  cert: TlsCert | undefined,
  h2: boolean,
) {
  const mods = [
    "mpm_event",
    "authz_core",
    "mime",
    "dir",
    "alias",
    "ssl",
    "socache_shmcb",
    ...(h2 ? ["http2"] : []),
  ];
  const threads = 16;
  const listen = hosts.map((h) => `Listen ${hostPort(h, o.port)}`);
  const tls: string[] = [];
  if (o.tlsPort !== undefined && cert) {
    for (const h of hosts) listen.push(`Listen ${hostPort(h, o.tlsPort)} https`);
    tls.push(
      `SSLSessionCache shmcb:${dir}/run/ssl_scache(512000)`,
      `<VirtualHost ${hosts.map((h) => hostPort(h, o.tlsPort!)).join(" ")}>`,
      `  ServerName localhost`,
      `  SSLEngine on`,
      `  SSLCertificateFile ${cert.certPath}`,
      `  SSLCertificateKeyFile ${cert.keyPath}`,
      h2 ? `  Protocols h2 http/1.1` : "",
      `</VirtualHost>`,
    );
  }
  // The run user only matters as root (Apache refuses to serve as root).
  const user = isRoot() ? "User nobody\nGroup nogroup" : "";
  return `# generated by tests/helpers/servers.ts
ServerRoot ${dir}
${mods.map((m) => `LoadModule ${m}_module ${APACHE_MODULES}/mod_${m}.so`).join("\n")}
${user}
ServerName localhost
DefaultRuntimeDir ${dir}/run
PidFile ${dir}/run/apache2.pid
Mutex file:${dir}/lock default
ErrorLog ${dir}/error.log
LogLevel warn
LogFormat "%a %{remote}p %{local}p %k %>s %B \\"%r\\" \\"%{SSL_PROTOCOL}x\\" \\"%{User-Agent}i\\"" ja4
CustomLog ${dir}/access.log ja4
TypesConfig /etc/mime.types
StartServers ${workers}
ServerLimit ${workers}
ThreadsPerChild ${threads}
ThreadLimit ${threads}
MaxRequestWorkers ${workers * threads}
MinSpareThreads ${threads}
MaxSpareThreads ${workers * threads}
KeepAlive On
MaxKeepAliveRequests ${o.keepaliveRequests ?? 1000}
KeepAliveTimeout ${o.keepaliveTimeout ?? 15}
${listen.join("\n")}
DocumentRoot ${dir}/htdocs
DirectoryIndex index.html
<Directory />
  Require all denied
</Directory>
<Directory ${dir}/htdocs>
  Require all granted
</Directory>
${tls.join("\n")}
${o.extraConfig ?? ""}
`;
}

export async function startApache(opts: ServerOptions): Promise<WebServer> {
  const bin = requireTool("apache2", "apache2");
  const { hosts, workers, body } = checkOpts(opts);
  const h2 = opts.http2 !== false;
  const need = [
    "mpm_event",
    "authz_core",
    "mime",
    "dir",
    "alias",
    "ssl",
    "socache_shmcb",
    ...(h2 ? ["http2"] : []),
  ];
  for (const m of need) {
    try {
      Deno.statSync(`${APACHE_MODULES}/mod_${m}.so`);
    } catch {
      throw new HarnessError(`${APACHE_MODULES}/mod_${m}.so missing: install Debian's apache2`);
    }
  }
  // SIGTERM: Apache stops its children and exits (graceful-stop would wait for keep-alive clients).
  const home = await serverHome("ja4ebpf-apache-", opts, hosts, 8000);
  const { dir, ports, close } = home;
  try {
    for (const d of ["run", "lock", "htdocs"]) await Deno.mkdir(`${dir}/${d}`, { mode: 0o755 });
    await Deno.writeTextFile(`${dir}/htdocs/index.html`, body, { mode: 0o644 });
    await home.makeCert();
    const cert = home.cert;
    const confPath = `${dir}/httpd.conf`;
    await Deno.writeTextFile(confPath, apacheConf(dir, opts, hosts, workers, cert, h2));
    // Debian's binary reads these when a config uses them; ours does not, but set them for its defaults.
    const env = {
      APACHE_RUN_DIR: `${dir}/run`,
      APACHE_PID_FILE: `${dir}/run/apache2.pid`,
      APACHE_LOCK_DIR: `${dir}/lock`,
      APACHE_LOG_DIR: dir,
      APACHE_RUN_USER: isRoot() ? "nobody" : (Deno.env.get("USER") ?? "nobody"),
      APACHE_RUN_GROUP: "nogroup",
    };
    const args = ["-d", dir, "-f", confPath];
    const test = await new Deno.Command(bin, { args: [...args, "-t"], env, stdout: "piped", stderr: "piped" })
      .output();
    if (!test.success) {
      throw new HarnessError(`apache2 -t rejected the config:\n${new TextDecoder().decode(test.stderr)}`);
    }
    const c = home.child = new Deno.Command(bin, {
      args: [...args, "-DFOREGROUND"],
      env,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderrText = new Response(c.stderr).text().catch(() => "");
    const why = async () => `${await tail(`${dir}/error.log`)}`;
    await waitListening(
      hosts,
      ports,
      opts,
      c,
      async () => `${await why()}${await Promise.race([stderrText, Promise.resolve("")])}`,
    );
    await waitUntil(() => childPids(c.pid).length >= workers, 10_000, `apache: ${workers} children`);
    return {
      kind: "apache",
      ...serverFields(dir, confPath, opts, hosts, body),
      cert,
      pids: () => ({ master: c.pid, workers: childPids(c.pid).filter(alive) }),
      async reload() {
        const old = new Set(childPids(c.pid));
        Deno.kill(c.pid, "SIGUSR1");
        let now: number[] = [];
        await waitUntil(
          () => {
            now = childPids(c.pid).filter(alive);
            return now.length >= 1 && now.every((p) => !old.has(p));
          },
          20_000,
          `apache graceful restart: new children replacing ${[...old].join(",")}`,
          why,
        );
        return now;
      },
      ...accessLogReader(`${dir}/access.log`, 0),
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
