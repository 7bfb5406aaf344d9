/**
 * The configuration schema: every key declared once (type, default, whether SIGHUP may reload it, a one-line
 * doc). The Config type, DEFAULT_CONFIG, the dotted key list (docs/configuration.md, `--help`) and the set of
 * reloadable keys are all derived from SCHEMA, so a key is added in one place.
 */

export const DEFAULT_IP_KEY_FILE = "/var/lib/ja4ebpf/ip.key";

export type Leaf =
  | { t: "bool"; def: boolean }
  | { t: "int"; def: number; min: number; max: number }
  | { t: "str"; def: string; check?: (v: string) => string | undefined }
  | { t: "enum"; def: string; values: readonly string[] }
  | { t: "strs"; def: readonly string[]; check?: (v: string) => string | undefined }
  | { t: "ints"; def: readonly number[]; min: number; max: number };
export type Spec = Leaf & { doc: string; reload?: boolean };
export interface Group {
  [k: string]: Spec | Group;
}

export const isSpec = (s: Spec | Group): s is Spec => typeof (s as Spec).t === "string";

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
      def: 0,
      min: 0,
      max: 1024,
      doc:
        "ring buffer size (MiB, rounded to a power of 2); 0: 4 MiB per online CPU, 8–64 (ja4ebpf_ring_backlog_max_bytes shows the room used)",
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
    tc_handle: {
      t: "int",
      def: 0x4a34,
      min: 1,
      max: 65535,
      doc:
        "handle and priority of the agent's tc filters (default 0x4a34); a second agent in the same network namespace needs its own",
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
      doc:
        "how long request facts wait for packet-side facts (JA4/JA4T) before the row is emitted (per-CPU perf buffers; with the ring buffer the facts precede the request)",
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
        doc: "send when this many rows are buffered",
      },
      batch_bytes: {
        t: "int",
        def: 8388608,
        min: 1024,
        max: 268435456,
        doc: "send when the buffered rows reach this many encoded bytes",
      },
      flush_interval_ms: {
        t: "int",
        def: 1000,
        min: 10,
        max: 600000,
        doc: "send at least this often when rows are buffered (keeps ≈ ≤ 1 insert/s)",
      },
      timeout_ms: { t: "int", def: 60000, min: 100, max: 600000, doc: "per-request timeout" },
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
      dead_max_mb: {
        t: "int",
        def: 64,
        min: 0,
        max: 1048576,
        doc:
          "cap of spool_dir/dead (quarantined batches); past it a batch is deleted and counted (dead_full)",
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
} as const satisfies Group;

/** The value a leaf spec admits (an enum: the union of its values). */
type LeafValue<S> = S extends { t: "bool" } ? boolean
  : S extends { t: "int" } ? number
  : S extends { t: "str" } ? string
  : S extends { t: "enum"; values: readonly (infer V extends string)[] } ? V
  : S extends { t: "strs" } ? string[]
  : S extends { t: "ints" } ? number[]
  : never;

/** The configuration object a schema group describes (mutable: SIGHUP swaps reloadable sections). */
export type ValueOf<G> = {
  -readonly [K in keyof G]: G[K] extends { t: string; doc: string } ? LeafValue<G[K]> : ValueOf<G[K]>;
};

/** The whole configuration, derived from SCHEMA. */
export type Config = ValueOf<typeof SCHEMA>;
export type ClickHouseConfig = Config["output"]["clickhouse"];
export type NginxCapture = Config["capture"]["nginx"];
export type ApacheCapture = Config["capture"]["apache"];
export type RingbufKind = Config["capture"]["ringbuf"];

export function walk(g: Group, prefix: string, fn: (key: string, s: Spec) => void): void {
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
  walk(SCHEMA, "", (key, s) => {
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

/**
 * A fresh object of the group's defaults. The one place an untyped object becomes a typed one: it is built
 * from the same schema the type is derived from (every group an object, every leaf its default).
 */
export function defaults<G extends Group>(g: G): ValueOf<G> {
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(g)) o[k] = isSpec(v) ? structuredClone(v.def) : defaults(v);
  return o as ValueOf<G>;
}

/** No config file: JSON lines on stdout, metrics on, no ClickHouse. */
export const DEFAULT_CONFIG: Readonly<Config> = deepFreeze(defaults(SCHEMA));

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object") {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Dotted keys whose values differ between two configs (for SIGHUP: which changes need a restart). */
export function changedKeys(a: Config, b: Config): string[] {
  const out: string[] = [];
  walk(SCHEMA, "", (key) => {
    const get = (c: Config) => key.split(".").reduce((o: unknown, k) => (o as Record<string, unknown>)[k], c);
    if (JSON.stringify(get(a)) !== JSON.stringify(get(b))) out.push(key);
  });
  return out;
}
