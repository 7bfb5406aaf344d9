/** Whether a configuration ships its rows anywhere (`run` refuses to start when not; --validate says so). */
import type { Config } from "./schema.ts";

/**
 * Why a configuration would discard every row (no stdout, no file, no ClickHouse), or undefined. The agent
 * refuses to start on it rather than capture for nothing.
 */
export function rowsGoNowhere(cfg: Pick<Config, "output">): string | undefined {
  const o = cfg.output;
  if (o.stdout || o.file.path || o.clickhouse.url) return undefined;
  return "no output for rows: output.stdout is false and output.file.path and output.clickhouse.url are " +
    "empty, so every captured row would be discarded; set at least one of them";
}
