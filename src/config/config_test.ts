import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../testing/asserts.ts";
import {
  changedKeys,
  type ClickHouseConfig,
  type Config,
  ConfigError,
  DEFAULT_CONFIG,
  loadConfig,
  type NginxCapture,
  parseConfig,
  readClickHousePassword,
  redacted,
  RELOADABLE,
  schemaKeys,
  Secret,
} from "./config.ts";

Deno.test("embedded default: stdout on, metrics on, no ClickHouse; original uprobes keys", () => {
  assertEquals(DEFAULT_CONFIG.output.stdout, true);
  assertEquals(DEFAULT_CONFIG.metrics, { enabled: true, listen: "127.0.0.1:9435" });
  assertEquals(DEFAULT_CONFIG.output.clickhouse.url, "");
  assertEquals(DEFAULT_CONFIG.uprobes, {
    enabled: true,
    servers: ["nginx", "apache"],
    max_retries: 30,
    retry_interval_sec: 2,
    tls_probes: "auto",
  });
  assertEquals(parseConfig("", "c.yaml"), DEFAULT_CONFIG);
  assertEquals(parseConfig("# only a comment\n", "c.yaml"), DEFAULT_CONFIG);
});

Deno.test("a full config parses and overrides defaults", () => {
  const c = parseConfig(
    `uprobes:
  servers: [nginx]
capture:
  nginx: tracepoint
  interfaces: [lo, eth0]
  ports: [80, 443]
output:
  stdout: false
  file: {path: /var/log/ja4ebpf/rows.jsonl, max_size_mb: 10}
  clickhouse:
    url: https://ch.example:8443
    password_file: /etc/ja4ebpf/clickhouse.password
    ttl_days: 30
privacy:
  strip_query: false
log:
  format: json
`,
    "config.yaml",
  );
  assertEquals(c.uprobes.servers, ["nginx"]);
  assertEquals(c.capture.ports, [80, 443]);
  assertEquals(c.capture.interfaces, ["lo", "eth0"]);
  assertEquals(c.output.file, { path: "/var/log/ja4ebpf/rows.jsonl", max_size_mb: 10, max_files: 5 });
  assertEquals(c.output.clickhouse.url, "https://ch.example:8443");
  assertEquals(c.output.clickhouse.database, "ja4ebpf");
  assertEquals(c.privacy.strip_query, false);
  assertEquals(c.log.format, "json");
  assertEquals(changedKeys(DEFAULT_CONFIG, c).includes("log.format"), true);
});

Deno.test("invalid configs name file, line and key", async (t) => {
  const cases: [string, string, string][] = [
    [
      "typo with suggestion",
      "output:\n  clickhouse:\n    urll: http://x\n",
      "c.yaml:3: output.clickhouse.urll: unknown key (did you mean url?)",
    ],
    [
      "unknown top-level key",
      "metric:\n  enabled: false\n",
      "c.yaml:1: metric: unknown key (did you mean metrics?)",
    ],
    ["unknown key, no suggestion", "log:\n  colour: red\n", "c.yaml:2: log.colour: unknown key"],
    ["bad enum", "log:\n  level: verbose\n", "c.yaml:2: log.level: must be one of debug, info, warn, error"],
    ["bool as yes", "uprobes:\n  enabled: yes\n", "c.yaml:2: uprobes.enabled: must be true or false"],
    [
      "int range",
      "\ncapture:\n  ring_size_mb: -1\n",
      "c.yaml:3: capture.ring_size_mb: must be between 0 and 1024",
    ],
    ["int type", "capture:\n  hold_ms: 2s\n", "c.yaml:2: capture.hold_ms: must be an integer"],
    [
      "list item",
      "capture:\n  ports: [80, 70000]\n",
      "c.yaml:2: capture.ports: item 1: must be an integer 1–65535",
    ],
    ["group as scalar", "output: yes\n", "c.yaml:1: output: must be a mapping of keys"],
    [
      "url credentials",
      "output:\n  clickhouse:\n    url: http://u:hunter2@h:8123\n",
      "c.yaml:3: output.clickhouse.url: credentials in the URL are not allowed",
    ],
    [
      "url scheme",
      "output:\n  clickhouse:\n    url: ftp://h\n",
      "output.clickhouse.url: must be http:// or https://",
    ],
    [
      "bad identifier",
      "output:\n  clickhouse:\n    table: 'x; DROP'\n",
      "c.yaml:3: output.clickhouse.table: must be an identifier",
    ],
    ["listen", "metrics:\n  listen: 9435\n", "c.yaml:2: metrics.listen: must be a string"],
    [
      "cross-key",
      "output:\n  clickhouse:\n    distributed_table: d\n",
      "c.yaml:3: output.clickhouse.distributed_table: needs output.clickhouse.on_cluster",
    ],
    ["yaml syntax", "log:\n  level: [info\n", "c.yaml:"],
    ["duplicate key", "log:\n  level: info\n  level: warn\n", "c.yaml:"],
  ];
  for (const [name, text, expected] of cases) {
    await t.step(name, () => {
      const e = assertThrows(() => parseConfig(text, "c.yaml"), ConfigError);
      assertStringIncludes(e.message, expected);
      assert(!e.message.includes("hunter2"), "the password is not echoed");
    });
  }
});

Deno.test("several errors are reported together", () => {
  const e = assertThrows(
    () => parseConfig("log:\n  levl: info\n  format: xml\n", "c.yaml"),
    ConfigError,
  ) as ConfigError;
  assertEquals(e.issues.map((i) => [i.line, i.key]), [[2, "log.levl"], [3, "log.format"]]);
});

Deno.test("loadConfig: explicit missing file is an error; bad file names the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => loadConfig(`${dir}/nope.yaml`), ConfigError, "nope.yaml");
    await Deno.writeTextFile(`${dir}/config.yaml`, "\n\nprivacy:\n  strip_querry: true\n");
    await assertRejects(
      () => loadConfig(`${dir}/config.yaml`),
      ConfigError,
      `${dir}/config.yaml:4: privacy.strip_querry: unknown key (did you mean strip_query?)`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("password file: refused when group/world-readable, read when 0600", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const p = `${dir}/pw`;
    await Deno.writeTextFile(p, "s3cret\n", { mode: 0o600 });
    await Deno.chmod(p, 0o644);
    await assertRejects(
      () => readClickHousePassword({ password_file: p, password_env: "" }, "c.yaml"),
      ConfigError,
      `${p}: mode 0644 is group/world-readable`,
    );
    await Deno.chmod(p, 0o640);
    await assertRejects(
      () => readClickHousePassword({ password_file: p, password_env: "" }),
      ConfigError,
      "0640",
    );
    await Deno.chmod(p, 0o600);
    const s = await readClickHousePassword({ password_file: p, password_env: "" });
    assertEquals(s?.reveal(), "s3cret");
    // loadConfig checks it at load time.
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `output:\n  clickhouse:\n    url: http://127.0.0.1:8123\n    password_file: ${p}\n    spool_dir: ${dir}\n`,
    );
    await Deno.chmod(p, 0o604);
    await assertRejects(() => loadConfig(`${dir}/c.yaml`), ConfigError, "group/world-readable");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("password from env var and from $CREDENTIALS_DIRECTORY", async () => {
  const dir = await Deno.makeTempDir();
  try {
    Deno.env.set("JA4EBPF_TEST_PW", "from-env");
    assertEquals(
      (await readClickHousePassword({ password_file: "", password_env: "JA4EBPF_TEST_PW" }))?.reveal(),
      "from-env",
    );
    await assertRejects(
      () => readClickHousePassword({ password_file: "", password_env: "JA4EBPF_TEST_UNSET" }),
      ConfigError,
      "JA4EBPF_TEST_UNSET is not set",
    );
    Deno.env.set("CREDENTIALS_DIRECTORY", dir);
    assertEquals(await readClickHousePassword({ password_file: "", password_env: "" }), undefined);
    await Deno.writeTextFile(`${dir}/clickhouse-password`, "from-systemd", { mode: 0o600 });
    assertEquals(
      (await readClickHousePassword({ password_file: "", password_env: "" }))?.reveal(),
      "from-systemd",
    );
  } finally {
    Deno.env.delete("JA4EBPF_TEST_PW");
    Deno.env.delete("CREDENTIALS_DIRECTORY");
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secret never prints; redacted() hides URL userinfo", () => {
  const s = new Secret("hunter2");
  const shown = [String(s), JSON.stringify({ s }), Deno.inspect({ s }), `${s}`].join(" ");
  assert(!shown.includes("hunter2"), shown);
  const c = structuredClone(DEFAULT_CONFIG) as typeof DEFAULT_CONFIG;
  (c.output.clickhouse as { url: string }).url = "http://bob:hunter2@h:8123/";
  const r = JSON.stringify(redacted(c));
  assert(!r.includes("hunter2") && !r.includes("bob"), r);
});

Deno.test("schema: every key documented; reloadable set", () => {
  const keys = schemaKeys();
  assert(keys.length >= 40, `${keys.length} keys`);
  for (const k of keys) assert(k.doc.length > 3, k.key);
  assert(RELOADABLE.has("log.level") && RELOADABLE.has("privacy.strip_query"));
  assert(!RELOADABLE.has("output.clickhouse.url") && !RELOADABLE.has("capture.ring_size_mb"));
});

Deno.test("docs/configuration.md lists every key", async () => {
  const doc = await Deno.readTextFile(new URL("../../docs/configuration.md", import.meta.url));
  for (const k of schemaKeys()) assertStringIncludes(doc, `\`${k.key}\``);
});

Deno.test("the Config type is derived from SCHEMA: values and keys outside it do not type-check", () => {
  const c: Config = parseConfig("capture:\n  nginx: raw_tp\n", "c.yaml");
  const nginx: NginxCapture = c.capture.nginx;
  assertEquals(nginx, "raw_tp");
  // Each line below must be a type error (deno test type-checks this file): an unused @ts-expect-error fails
  // the check, e.g. if the type fell back to `string` or to an index signature.
  // @ts-expect-error "kprobe" is not one of capture.nginx's values
  c.capture.nginx = "kprobe";
  // @ts-expect-error log.level is an enum of the schema
  c.log.level = "verbose";
  // @ts-expect-error capture.ports is a list of integers
  c.capture.ports = ["80"];
  // @ts-expect-error no such key in the schema
  c.capture.nginxx = "auto";
  const ch: ClickHouseConfig = c.output.clickhouse;
  // @ts-expect-error batch_rows is an integer
  ch.batch_rows = "1";
});

Deno.test("a parsed config has exactly the schema's keys (no more, no fewer)", () => {
  const leaves = (o: unknown, prefix = ""): string[] =>
    Object.entries(o as Record<string, unknown>).flatMap(([k, v]) => {
      const key = prefix ? `${prefix}.${k}` : k;
      return v && typeof v === "object" && !Array.isArray(v) ? leaves(v, key) : [key];
    });
  const keys = schemaKeys().map((k) => k.key);
  assertEquals(leaves(parseConfig("log:\n  level: warn\n", "c.yaml")), keys);
  assertEquals(leaves(DEFAULT_CONFIG), keys);
  for (const k of schemaKeys()) {
    const v = k.key.split(".").reduce((o: unknown, p) => (o as Record<string, unknown>)[p], DEFAULT_CONFIG);
    assertEquals(v, k.default, k.key);
  }
});
