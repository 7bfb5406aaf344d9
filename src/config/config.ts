/**
 * The agent's configuration: schema, defaults, YAML loading with line numbers, validation and secrets, in one
 * module. Every key is declared once in SCHEMA (type, default, whether SIGHUP may reload it, a one-line doc);
 * the Config type, DEFAULT_CONFIG and docs/configuration.md follow from it.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node as YamlNode, Pair, Scalar, YAMLMap, YAMLSeq } from "yaml";

export const DEFAULT_CONFIG_PATH = "/etc/ja4ebpf/config.yaml";
export const DEFAULT_IP_KEY_FILE = "/var/lib/ja4ebpf/ip.key";

// ---------------------------------------------------------------------------------------------------------
// Types

export type NginxCapture = "auto" | "tracepoint" | "kretprobe" | "fexit" | "raw_tp";
export type ApacheCapture = "auto" | "uprobe" | "read_tracepoint";
export type RingbufKind = "auto" | "ringbuf" | "perfbuf";

export interface ClickHouseConfig {
  /** "" = no ClickHouse sink. http:// or https://, no credentials. */
  url: string;
  database: string;
  table: string;
  user: string;
  password_file: string;
  password_env: string;
  ca_file: string;
  create: boolean;
  on_cluster: string;
  distributed_table: string;
  ttl_days: number;
  batch_rows: number;
  batch_bytes: number;
  flush_interval_ms: number;
  timeout_ms: number;
  spool_dir: string;
  spool_max_mb: number;
}

export interface Config {
  uprobes: {
    enabled: boolean;
    servers: string[];
    max_retries: number;
    retry_interval_sec: number;
    tls_probes: "auto" | "library";
  };
  capture: {
    nginx: NginxCapture;
    apache: ApacheCapture;
    ringbuf: RingbufKind;
    kretprobe_maxactive: number;
    ring_size_mb: number;
    max_head_bytes: number;
    interfaces: string[];
    ports: number[];
    hold_ms: number;
    max_connections: number;
  };
  output: {
    stdout: boolean;
    file: { path: string; max_size_mb: number; max_files: number };
    clickhouse: ClickHouseConfig;
  };
  privacy: { ship_raw_ja4h: boolean; strip_query: boolean; anonymize_ip: boolean; ip_key_file: string };
  metrics: { enabled: boolean; listen: string };
  log: { level: "debug" | "info" | "warn" | "error"; format: "plain" | "json" };
}

// ---------------------------------------------------------------------------------------------------------
// Schema

type Leaf =
  | { t: "bool"; def: boolean }
  | { t: "int"; def: number; min: number; max: number }
  | { t: "str"; def: string; check?: (v: string) => string | undefined }
  | { t: "enum"; def: string; values: readonly string[] }
  | { t: "strs"; def: string[]; check?: (v: string) => string | undefined }
  | { t: "ints"; def: number[]; min: number; max: number };
type Spec = Leaf & { doc: string; reload?: boolean };
interface Group {
  [k: string]: Spec | Group;
}

const isSpec = (s: Spec | Group): s is Spec => typeof (s as Spec).t === "string";

const identifier = (v: string) =>
  v === "" || /^[A-Za-z_][A-Za-z0-9_]*$/.test(v)
    ? undefined
    : "must be an identifier ([A-Za-z_][A-Za-z0-9_]*)";
const nonEmptyIdentifier = (v: string) => v === "" ? "must not be empty" : identifier(v);
const listenAddr = (v: string) =>
  /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(v) && Number(v.slice(v.lastIndexOf(":") + 1)) <= 65535
    ? undefined
    : "must be HOST:PORT (e.g. 127.0.0.1:9435)";
const ifname = (v: string) =>
  /^[A-Za-z0-9_.:@-]{1,15}$/.test(v) ? undefined : 'must be an interface name or "auto"';
const envName = (v: string) =>
  v === "" || /^[A-Za-z_][A-Za-z0-9_]*$/.test(v) ? undefined : "must be an environment variable name";

export const SCHEMA = {
  uprobes: {
    enabled: {
      t: "bool",
      def: true,
      doc: "attach user-space probes (nginx/Apache functions, TLS libraries)",
    },
    servers: {
      t: "strs",
      def: ["nginx", "apache"],
      check: (v: string) => ["nginx", "apache"].includes(v) ? undefined : "must be nginx or apache",
      doc: "which web servers to look for",
    },
    max_retries: {
      t: "int",
      def: 30,
      min: 0,
      max: 100000,
      doc: "attempts to find and attach to a server that is not running yet",
    },
    retry_interval_sec: { t: "int", def: 2, min: 1, max: 3600, doc: "seconds between attach attempts" },
    tls_probes: {
      t: "enum",
      def: "auto",
      values: ["auto", "library"],
      doc:
        "HTTPS probes: auto = on the server's own file (only servers trap); library = on libssl (every process mapping it traps)",
    },
  },
  capture: {
    nginx: {
      t: "enum",
      def: "auto",
      values: ["auto", "tracepoint", "kretprobe", "fexit", "raw_tp"],
      doc: "how nginx's reads are captured",
    },
    apache: {
      t: "enum",
      def: "auto",
      values: ["auto", "uprobe", "read_tracepoint"],
      doc: "how Apache's reads are captured",
    },
    ringbuf: {
      t: "enum",
      def: "auto",
      values: ["auto", "ringbuf", "perfbuf"],
      doc: "kernel→agent channel (BPF ring buffer ≥ 5.8, else perf buffer)",
    },
    kretprobe_maxactive: {
      t: "int",
      def: 4096,
      min: 1,
      max: 4096,
      doc:
        "return instances of the recvfrom kretprobe (kretprobe method only; too few and returns are missed)",
    },
    ring_size_mb: {
      t: "int",
      def: 16,
      min: 1,
      max: 1024,
      doc: "ring buffer size (MiB, rounded to a power of 2)",
    },
    max_head_bytes: {
      t: "int",
      def: 16384,
      min: 1024,
      max: 65536,
      doc: "bytes of each request head captured; longer heads are marked truncated",
    },
    interfaces: {
      t: "strs",
      def: ["auto"],
      check: ifname,
      doc:
        'interfaces for the TCP/TLS packet hooks ("auto" = those with the servers\' addresses; lo allowed)',
    },
    ports: {
      t: "ints",
      def: [],
      min: 1,
      max: 65535,
      doc: "server ports to watch; empty = discovered from the servers' listening sockets",
    },
    hold_ms: {
      t: "int",
      def: 2000,
      min: 0,
      max: 60000,
      reload: true,
      doc: "how long request facts wait for packet-side facts (JA4/JA4T) before the row is emitted",
    },
    max_connections: {
      t: "int",
      def: 65536,
      min: 64,
      max: 4194304,
      doc: "connections tracked at once; beyond it the oldest are evicted (counted)",
    },
  },
  output: {
    stdout: { t: "bool", def: true, doc: "write rows as JSON lines to stdout" },
    file: {
      path: { t: "str", def: "", doc: 'JSON lines file (mode 0600); "" = off' },
      max_size_mb: {
        t: "int",
        def: 100,
        min: 1,
        max: 1048576,
        doc: "rotate when the file reaches this size",
      },
      max_files: { t: "int", def: 5, min: 1, max: 1000, doc: "rotated files kept (path.1 … path.N)" },
    },
    clickhouse: {
      url: {
        t: "str",
        def: "",
        check: (v: string) => {
          if (v === "") return undefined;
          let u: URL;
          try {
            u = new URL(v);
          } catch {
            return "is not a URL";
          }
          if (u.protocol !== "http:" && u.protocol !== "https:") return "must be http:// or https://";
          if (u.username || u.password) {
            return "credentials in the URL are not allowed (proxies log URLs): use user and password_file";
          }
          if (u.search || u.hash) return "must not carry a query string or fragment";
          return undefined;
        },
        doc: 'ClickHouse HTTP(S) endpoint, e.g. http://127.0.0.1:8123; "" = no ClickHouse',
      },
      database: { t: "str", def: "ja4ebpf", check: nonEmptyIdentifier, doc: "database" },
      table: { t: "str", def: "requests", check: nonEmptyIdentifier, doc: "table the agent inserts into" },
      user: { t: "str", def: "default", doc: "user (sent as X-ClickHouse-User)" },
      password_file: {
        t: "str",
        def: "",
        doc: "file holding the password; refused if group/world-readable",
      },
      password_env: {
        t: "str",
        def: "",
        check: envName,
        doc: "environment variable holding the password (after password_file)",
      },
      ca_file: { t: "str", def: "", doc: "PEM CA bundle for https (added to the system roots)" },
      create: { t: "bool", def: true, doc: "create the database and table when missing" },
      on_cluster: {
        t: "str",
        def: "",
        check: identifier,
        doc: "cluster for ON CLUSTER DDL (current servers)",
      },
      distributed_table: {
        t: "str",
        def: "",
        check: identifier,
        doc: "with on_cluster: a Distributed table over `table`, which the agent then inserts into",
      },
      ttl_days: { t: "int", def: 0, min: 0, max: 36500, doc: "row TTL in days on new tables; 0 = keep" },
      batch_rows: {
        t: "int",
        def: 20000,
        min: 1,
        max: 1048576,
        reload: true,
        doc: "send when this many rows are buffered",
      },
      batch_bytes: {
        t: "int",
        def: 8388608,
        min: 1024,
        max: 268435456,
        reload: true,
        doc: "send when the buffered JSON reaches this many bytes",
      },
      flush_interval_ms: {
        t: "int",
        def: 1000,
        min: 10,
        max: 600000,
        reload: true,
        doc: "send at least this often when rows are buffered (keeps ≈ ≤ 1 insert/s)",
      },
      timeout_ms: { t: "int", def: 60000, min: 100, max: 600000, reload: true, doc: "per-request timeout" },
      spool_dir: {
        t: "str",
        def: "/var/lib/ja4ebpf/spool",
        doc: "on-disk queue of batches not yet acknowledged (mode 0700)",
      },
      spool_max_mb: {
        t: "int",
        def: 256,
        min: 1,
        max: 1048576,
        doc: "spool cap; when full the newest rows are dropped and counted (spool_full)",
      },
    },
  },
  privacy: {
    ship_raw_ja4h: {
      t: "bool",
      def: false,
      reload: true,
      doc: "ship the raw JA4H forms (ja4h_r, ja4h_ro carry cookie values)",
    },
    strip_query: { t: "bool", def: true, reload: true, doc: "remove the query string from path" },
    anonymize_ip: {
      t: "bool",
      def: false,
      reload: true,
      doc: "replace client IPs by an HMAC-SHA-256 with a host-local key",
    },
    ip_key_file: {
      t: "str",
      def: "",
      reload: true,
      doc:
        'key for anonymize_ip (32 random bytes created, mode 0600, when missing); "" = /var/lib/ja4ebpf/ip.key',
    },
  },
  metrics: {
    enabled: { t: "bool", def: true, doc: "serve /metrics and /healthz" },
    listen: { t: "str", def: "127.0.0.1:9435", check: listenAddr, doc: "address of the metrics endpoint" },
  },
  log: {
    level: {
      t: "enum",
      def: "info",
      values: ["debug", "info", "warn", "error"],
      reload: true,
      doc: "log level",
    },
    format: {
      t: "enum",
      def: "plain",
      values: ["plain", "json"],
      reload: true,
      doc: "log line format (stderr)",
    },
  },
} satisfies Group;

function walk(g: Group, prefix: string, fn: (key: string, s: Spec) => void): void {
  for (const [k, v] of Object.entries(g)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (isSpec(v)) fn(key, v);
    else walk(v, key, fn);
  }
}

/** Every key, dotted, with its spec (for docs and `--help`). */
export function schemaKeys(): {
  key: string;
  type: string;
  default: unknown;
  reloadable: boolean;
  doc: string;
}[] {
  const out: { key: string; type: string; default: unknown; reloadable: boolean; doc: string }[] = [];
  walk(SCHEMA as Group, "", (key, s) => {
    const type = s.t === "enum"
      ? s.values.join(" \\| ")
      : s.t === "strs"
      ? "list of strings"
      : s.t === "ints"
      ? "list of integers"
      : s.t === "int"
      ? `integer ${s.min}–${s.max}`
      : s.t === "bool"
      ? "boolean"
      : "string";
    out.push({ key, type, default: s.def, reloadable: !!s.reload, doc: s.doc });
  });
  return out;
}

/** Dotted keys a SIGHUP may change; any other change needs a restart. */
export const RELOADABLE: ReadonlySet<string> = new Set(
  schemaKeys().filter((k) => k.reloadable).map((k) => k.key),
);

function defaults(g: Group): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(g)) o[k] = isSpec(v) ? structuredClone(v.def) : defaults(v);
  return o;
}

/** No config file: JSON lines on stdout, metrics on, no ClickHouse. */
export const DEFAULT_CONFIG: Readonly<Config> = deepFreeze(defaults(SCHEMA as Group) as unknown as Config);

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object") {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Errors

export interface ConfigIssue {
  file: string;
  /** 1-based; 0 when not tied to a line. */
  line: number;
  /** Dotted key ("" for the document itself). */
  key: string;
  message: string;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join("\n"));
    this.name = "ConfigError";
    this.issues = issues;
  }
}

function formatIssue(i: ConfigIssue): string {
  return `${i.file}${i.line ? `:${i.line}` : ""}: ${i.key ? `${i.key}: ` : ""}${i.message}`;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const t = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = t;
    }
  }
  return d[b.length];
}

function suggest(word: string, options: string[]): string {
  let best = "";
  let bestD = Infinity;
  for (const o of options) {
    const d = editDistance(word.toLowerCase(), o);
    if (d < bestD) [best, bestD] = [o, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? ` (did you mean ${best}?)` : "";
}

// ---------------------------------------------------------------------------------------------------------
// Parsing

/** Parses and validates YAML text. `file` names the source in error messages. Throws ConfigError. */
export function parseConfig(text: string, file = "config.yaml"): Config {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  const issues: ConfigIssue[] = [];
  const lineOf = (n: { range?: [number, number, number] | null } | null | undefined) =>
    n?.range ? lc.linePos(n.range[0]).line : 0;
  for (const e of doc.errors) {
    const line = e.pos ? lc.linePos(e.pos[0]).line : 0;
    issues.push({ file, line, key: "", message: `YAML: ${e.message.split("\n")[0]}` });
  }
  if (issues.length) throw new ConfigError(issues);
  const cfg = defaults(SCHEMA as Group);
  const root = doc.contents;
  if (root === null || (isScalar(root) && (root.value === null || root.value === ""))) {
    return cfg as unknown as Config; // empty file = defaults
  }
  readGroup(root as YamlNode, SCHEMA as Group, "", cfg, issues, file, lineOf);
  if (issues.length) throw new ConfigError(issues);
  crossCheck(cfg as unknown as Config, file, issues, doc, lc);
  if (issues.length) throw new ConfigError(issues);
  return cfg as unknown as Config;
}

type LineOf = (n: { range?: [number, number, number] | null } | null | undefined) => number;

function readGroup(
  node: YamlNode,
  g: Group,
  prefix: string,
  out: Record<string, unknown>,
  issues: ConfigIssue[],
  file: string,
  lineOf: LineOf,
): void {
  if (!isMap(node)) {
    issues.push({ file, line: lineOf(node), key: prefix, message: "must be a mapping of keys" });
    return;
  }
  for (const pair of (node as YAMLMap).items as Pair<YamlNode, YamlNode>[]) {
    const keyNode = pair.key as Scalar | null;
    const name = isScalar(keyNode) ? String(keyNode.value) : String(keyNode);
    const key = prefix ? `${prefix}.${name}` : name;
    const line = lineOf(keyNode);
    const spec = Object.hasOwn(g, name) ? g[name] : undefined;
    if (!spec) {
      issues.push({ file, line, key, message: `unknown key${suggest(name, Object.keys(g))}` });
      continue;
    }
    const value = pair.value as YamlNode | null;
    if (!isSpec(spec)) {
      // A present but empty group ("output:") keeps its defaults.
      if (value === null || (isScalar(value) && value.value === null)) continue;
      readGroup(value, spec, key, out[name] as Record<string, unknown>, issues, file, lineOf);
      continue;
    }
    const r = readLeaf(value, spec);
    if (r instanceof LeafError) {
      issues.push({ file, line: lineOf(value) || line, key, message: r.error });
    } else {
      out[name] = r;
    }
  }
}

class LeafError {
  constructor(readonly error: string) {}
}

function readLeaf(node: YamlNode | null, s: Spec): unknown {
  const scalar = (n: YamlNode | null) => (isScalar(n) ? n.value : undefined);
  const fmt = (v: unknown) => JSON.stringify(v) ?? String(v);
  switch (s.t) {
    case "bool": {
      const v = scalar(node);
      return typeof v === "boolean"
        ? v
        : new LeafError(`must be true or false, got ${fmt(v ?? "a collection")}`);
    }
    case "int": {
      const v = scalar(node);
      if (typeof v !== "number" || !Number.isInteger(v)) {
        return new LeafError(`must be an integer, got ${fmt(v)}`);
      }
      if (v < s.min || v > s.max) return new LeafError(`must be between ${s.min} and ${s.max}, got ${v}`);
      return v;
    }
    case "str": {
      const v = scalar(node);
      if (v === null) return "";
      if (typeof v !== "string") return new LeafError(`must be a string, got ${fmt(v)}`);
      const e = s.check?.(v);
      return e ? new LeafError(e) : v;
    }
    case "enum": {
      const v = scalar(node);
      return typeof v === "string" && s.values.includes(v) ? v : new LeafError(
        `must be one of ${s.values.join(", ")}, got ${fmt(v)}${suggest(String(v), [...s.values])}`,
      );
    }
    case "strs":
    case "ints": {
      if (!isSeq(node)) return new LeafError("must be a list ([a, b])");
      const out: (string | number)[] = [];
      for (const [i, it] of ((node as YAMLSeq).items as YamlNode[]).entries()) {
        const v = scalar(it);
        if (s.t === "strs") {
          if (typeof v !== "string") return new LeafError(`item ${i}: must be a string, got ${fmt(v)}`);
          const e = s.check?.(v);
          if (e) return new LeafError(`item ${i} (${v}): ${e}`);
        } else {
          if (typeof v !== "number" || !Number.isInteger(v) || v < s.min || v > s.max) {
            return new LeafError(`item ${i}: must be an integer ${s.min}–${s.max}, got ${fmt(v)}`);
          }
        }
        out.push(v as string | number);
      }
      return out;
    }
  }
}

/** Rules spanning keys, reported at the line of the key that has to change. */
function crossCheck(
  c: Config,
  file: string,
  issues: ConfigIssue[],
  doc: ReturnType<typeof parseDocument>,
  lc: LineCounter,
): void {
  const lineOfKey = (key: string) => {
    const path = key.split(".");
    const pair = doc.getIn(path.slice(0, -1), true) as YAMLMap | undefined;
    const item = isMap(pair)
      ? (pair.items as Pair<Scalar, unknown>[]).find((p) => p.key?.value === path.at(-1))
      : undefined;
    return item?.key?.range ? lc.linePos(item.key.range[0]).line : 0;
  };
  const ch = c.output.clickhouse;
  if (ch.distributed_table && !ch.on_cluster) {
    issues.push({
      file,
      line: lineOfKey("output.clickhouse.distributed_table"),
      key: "output.clickhouse.distributed_table",
      message: "needs output.clickhouse.on_cluster",
    });
  }
  if (ch.distributed_table && ch.distributed_table === ch.table) {
    issues.push({
      file,
      line: lineOfKey("output.clickhouse.distributed_table"),
      key: "output.clickhouse.distributed_table",
      message: "must differ from output.clickhouse.table",
    });
  }
  if (ch.url && !ch.spool_dir) {
    issues.push({
      file,
      line: lineOfKey("output.clickhouse.spool_dir"),
      key: "output.clickhouse.spool_dir",
      message: "must be set when output.clickhouse.url is",
    });
  }
  if (ch.ca_file && ch.url.startsWith("http:")) {
    issues.push({
      file,
      line: lineOfKey("output.clickhouse.ca_file"),
      key: "output.clickhouse.ca_file",
      message: "only applies to an https:// url",
    });
  }
}

/**
 * Loads the config. No path: the default file, or the embedded defaults when it does not exist. An explicit
 * path that does not exist is an error. Throws ConfigError (with file and line) on any invalid key.
 */
export async function loadConfig(path?: string): Promise<Config> {
  const file = path ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (path === undefined && e instanceof Deno.errors.NotFound) {
      return structuredClone(DEFAULT_CONFIG) as Config;
    }
    throw new ConfigError([{ file, line: 0, key: "", message: `cannot read: ${(e as Error).message}` }]);
  }
  const cfg = parseConfig(text, file);
  // Fail at load time, not at the first insert, on a bad password file.
  if (cfg.output.clickhouse.url) await readClickHousePassword(cfg.output.clickhouse, file);
  return cfg;
}

// ---------------------------------------------------------------------------------------------------------
// Secrets

/** A password that prints as *** everywhere (logs, JSON, Deno.inspect); reveal() only where it is sent. */
export class Secret {
  #v: string;
  constructor(v: string) {
    this.#v = v;
  }
  reveal(): string {
    return this.#v;
  }
  toString(): string {
    return "***";
  }
  toJSON(): string {
    return "***";
  }
  [Symbol.for("Deno.customInspect")](): string {
    return "Secret(***)";
  }
}

/**
 * The ClickHouse password: password_file (refused when group/world-readable), else the env var named by
 * password_env, else $CREDENTIALS_DIRECTORY/clickhouse-password (systemd LoadCredential=). undefined = none.
 */
export async function readClickHousePassword(
  ch: Pick<ClickHouseConfig, "password_file" | "password_env">,
  file = "config",
): Promise<Secret | undefined> {
  const fromFile = async (p: string, key: string) => {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(p);
    } catch (e) {
      throw new ConfigError([{ file, line: 0, key, message: `${p}: ${(e as Error).message}` }]);
    }
    const mode = (st.mode ?? 0) & 0o777;
    if (mode & 0o077) {
      throw new ConfigError([{
        file,
        line: 0,
        key,
        message: `${p}: mode 0${mode.toString(8)} is group/world-readable; chmod 600 it`,
      }]);
    }
    return new Secret((await Deno.readTextFile(p)).replace(/\r?\n$/, ""));
  };
  if (ch.password_file) return await fromFile(ch.password_file, "output.clickhouse.password_file");
  if (ch.password_env) {
    const v = Deno.env.get(ch.password_env);
    if (v === undefined) {
      throw new ConfigError([{
        file,
        line: 0,
        key: "output.clickhouse.password_env",
        message: `environment variable ${ch.password_env} is not set`,
      }]);
    }
    return new Secret(v);
  }
  const credDir = Deno.env.get("CREDENTIALS_DIRECTORY");
  if (credDir) {
    const p = `${credDir}/clickhouse-password`;
    try {
      await Deno.stat(p);
    } catch {
      return undefined;
    }
    return await fromFile(p, "$CREDENTIALS_DIRECTORY/clickhouse-password");
  }
  return undefined;
}

/** A copy safe to log: URL userinfo and anything secret-looking replaced. */
export function redacted(c: Config): Config {
  const r = structuredClone(c) as Config;
  const ch = r.output.clickhouse;
  if (ch.url) {
    try {
      const u = new URL(ch.url);
      if (u.username || u.password) {
        u.username = "***";
        u.password = "";
        ch.url = u.toString();
      }
    } catch {
      ch.url = "***";
    }
  }
  return r;
}

/** Dotted keys whose values differ between two configs (for SIGHUP: which changes need a restart). */
export function changedKeys(a: Config, b: Config): string[] {
  const out: string[] = [];
  walk(SCHEMA as Group, "", (key) => {
    const get = (c: Config) => key.split(".").reduce((o: unknown, k) => (o as Record<string, unknown>)[k], c);
    if (JSON.stringify(get(a)) !== JSON.stringify(get(b))) out.push(key);
  });
  return out;
}
