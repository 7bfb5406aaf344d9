/** Secrets: the ClickHouse password (never printed) and a loggable copy of a configuration. */
import type { ClickHouseConfig, Config } from "./schema.ts";
import { ConfigError } from "./errors.ts";

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
  const r = structuredClone(c);
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
