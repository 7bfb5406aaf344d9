/**
 * Loading: YAML text → a validated Config, every problem reported at once with its file, line and dotted key
 * (unknown keys with a suggestion, values against the schema, rules spanning keys).
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node as YamlNode, Pair, Scalar, YAMLMap, YAMLSeq } from "yaml";
import { type Config, defaults, type Group, isSpec, SCHEMA, type Spec } from "./schema.ts";
import { ConfigError, type ConfigIssue, suggest } from "./errors.ts";
import { readClickHousePassword } from "./secrets.ts";

export const DEFAULT_CONFIG_PATH = "/etc/ja4ebpf/config.yaml";

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
  const cfg: Config = defaults(SCHEMA);
  const root = doc.contents;
  if (root === null || (isScalar(root) && (root.value === null || root.value === ""))) {
    return cfg; // empty file = defaults
  }
  readGroup(root as YamlNode, SCHEMA, "", cfg, issues, file, lineOf);
  if (issues.length) throw new ConfigError(issues);
  crossCheck(cfg, file, issues, doc, lc);
  if (issues.length) throw new ConfigError(issues);
  return cfg;
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
      return defaults(SCHEMA);
    }
    throw new ConfigError([{ file, line: 0, key: "", message: `cannot read: ${(e as Error).message}` }]);
  }
  const cfg = parseConfig(text, file);
  // Fail at load time, not at the first insert, on a bad password file.
  if (cfg.output.clickhouse.url) await readClickHousePassword(cfg.output.clickhouse, file);
  return cfg;
}
