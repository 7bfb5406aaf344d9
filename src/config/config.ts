/**
 * The agent's configuration, one import for the rest of the code: the schema (src/config/schema.ts: every
 * key with its type, default, reloadability and doc; the Config type and DEFAULT_CONFIG derived from it),
 * loading with errors that name file, line and key (load.ts, errors.ts), and secrets (secrets.ts).
 */
export {
  type ApacheCapture,
  changedKeys,
  type ClickHouseConfig,
  type Config,
  DEFAULT_CONFIG,
  DEFAULT_IP_KEY_FILE,
  type NginxCapture,
  RELOADABLE,
  type RingbufKind,
  SCHEMA,
  schemaKeys,
} from "./schema.ts";
export { ConfigError, type ConfigIssue } from "./errors.ts";
export { DEFAULT_CONFIG_PATH, loadConfig, parseConfig } from "./load.ts";
export { readClickHousePassword, redacted, Secret } from "./secrets.ts";
