/**
 * Starts Debian's clickhouse-server for a test on its own ports (HTTP 18123, native 19000, interserver 19009),
 * with its own config, users and data directory in a temp dir. stop()/start() keep the data (outage tests);
 * close() stops it and removes everything.
 */
export const CH_HTTP_PORT = 18123;
export const CH_TCP_PORT = 19000;
export const CH_INTERSERVER_PORT = 19009;

export interface ClickHouseUser {
  name: string;
  password: string;
  /** Settings of the user's own profile (e.g. max_rows_to_read), on top of the default profile's. */
  settings?: Record<string, string | number>;
}

export interface ClickHouseServer {
  url: string;
  dir: string;
  /** Runs SQL as the default user (no password); returns the body; throws on a non-2xx answer. */
  query(sql: string): Promise<string>;
  /** SIGTERM and wait for the exit; data kept. */
  stop(): Promise<void>;
  /** Starts again over the same data; resolves once /ping answers. */
  start(): Promise<void>;
  close(): Promise<void>;
}

function which(cmd: string): string | undefined {
  for (const d of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/usr/bin"])) {
    try {
      if (Deno.statSync(`${d}/${cmd}`).isFile) return `${d}/${cmd}`;
    } catch { /* next */ }
  }
  return undefined;
}

interface ChPorts {
  http: number;
  tcp: number;
  interserver: number;
}

function configXml(dir: string, ports: ChPorts): string {
  return `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>${dir}/log/server.log</log><errorlog>${dir}/log/err.log</errorlog>
    <size>10M</size><count>1</count></logger>
  <http_port>${ports.http}</http_port>
  <tcp_port>${ports.tcp}</tcp_port>
  <interserver_http_port>${ports.interserver}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>${dir}/data/</path>
  <tmp_path>${dir}/tmp/</tmp_path>
  <user_files_path>${dir}/user_files/</user_files_path>
  <format_schema_path>${dir}/format_schemas/</format_schema_path>
  <users_config>${dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <keep_alive_timeout>3</keep_alive_timeout>
</yandex>
`;
}

function esc(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function usersXml(users: ClickHouseUser[]): string {
  const user = (name: string, pw: string, profile: string) =>
    `<${name}><password>${esc(pw)}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>` +
    `<profile>${profile}</profile><quota>default</quota></${name}>`;
  const profiles = users.filter((u) => u.settings).map((u) =>
    `<p_${u.name}><max_memory_usage>1000000000</max_memory_usage>` +
    Object.entries(u.settings!).map(([k, v]) => `<${k}>${esc(String(v))}</${k}>`).join("") + `</p_${u.name}>`
  );
  return `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>1000000000</max_memory_usage></default>${profiles.join("")}</profiles>
  <users>${user("default", "", "default")}${
    users.map((u) => user(u.name, u.password, u.settings ? `p_${u.name}` : "default")).join("")
  }</users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`;
}

function portFree(port: number): boolean {
  try {
    const l = Deno.listen({ hostname: "127.0.0.1", port });
    l.close();
    return true;
  } catch {
    return false;
  }
}

export interface ClickHouseOptions {
  users?: ClickHouseUser[];
  /** Ports for a test that may run beside the others; default CH_HTTP_PORT, CH_TCP_PORT, CH_INTERSERVER_PORT. */
  httpPort?: number;
  tcpPort?: number;
  interserverPort?: number;
}

export async function startClickHouse(opts: ClickHouseOptions = {}): Promise<ClickHouseServer> {
  const bin = which("clickhouse-server");
  if (!bin) {
    throw new Error(
      "clickhouse-server not found: install Debian's clickhouse-server (apt-get install clickhouse-server)",
    );
  }
  const ports: ChPorts = {
    http: opts.httpPort ?? CH_HTTP_PORT,
    tcp: opts.tcpPort ?? CH_TCP_PORT,
    interserver: opts.interserverPort ?? CH_INTERSERVER_PORT,
  };
  for (const p of [ports.http, ports.tcp, ports.interserver]) {
    if (!portFree(p)) {
      throw new Error(`port ${p} is busy: another ClickHouse test server still running?`);
    }
  }
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-ch-" });
  await Deno.mkdir(`${dir}/log`);
  await Deno.writeTextFile(`${dir}/config.xml`, configXml(dir, ports));
  await Deno.writeTextFile(`${dir}/users.xml`, usersXml(opts.users ?? []));
  const url = `http://127.0.0.1:${ports.http}`;
  let child: Deno.ChildProcess | undefined;

  const start = async () => {
    child = new Deno.Command(bin, {
      args: [`--config-file=${dir}/config.xml`],
      stdout: "null",
      stderr: "null",
      stdin: "null",
    }).spawn();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${url}/ping`);
        const t = await r.text();
        if (r.ok && t.startsWith("Ok")) return;
      } catch { /* not yet */ }
      const exited = await Promise.race([child.status.then(() => true), delay(100).then(() => false)]);
      if (exited) {
        const log = await Deno.readTextFile(`${dir}/log/err.log`).catch(() => "");
        throw new Error(`clickhouse-server exited at start:\n${log.slice(-2000)}`);
      }
    }
    throw new Error("clickhouse-server did not answer /ping within 30 s");
  };
  const stop = async () => {
    if (!child) return;
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    const t = setTimeout(() => {
      try {
        child?.kill("SIGKILL");
      } catch { /* gone */ }
    }, 15_000);
    await child.status;
    clearTimeout(t);
    child = undefined;
  };
  await start();
  return {
    url,
    dir,
    async query(sql: string): Promise<string> {
      const r = await fetch(`${url}/`, { method: "POST", body: sql });
      const t = await r.text();
      if (!r.ok) throw new Error(`ClickHouse ${r.status}: ${t.slice(0, 500)}`);
      return t;
    },
    stop,
    start,
    async close() {
      await stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
