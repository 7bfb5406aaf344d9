import { parseFlags } from "./args.ts";
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig, redacted } from "../config/config.ts";
import { configureLog, log } from "../log.ts";
import { Agent, StartAbortedError } from "../agent/agent.ts";
import { rowsGoNowhere } from "../config/outputs.ts";

export { rowsGoNowhere };

const USAGE = `Usage: ja4ebpf run [--config FILE]
  Captures the HTTP requests of nginx and Apache with eBPF and writes one row per request.
  --config FILE   YAML configuration (default ${DEFAULT_CONFIG_PATH}; without it: JSON lines on stdout)
Signals: SIGINT/SIGTERM detach, flush and exit 0; SIGHUP reloads the configuration.`;

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseFlags(args, { config: { type: "string", short: "c" } }, USAGE);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  let cfg;
  try {
    cfg = await loadConfig(values.config as string | undefined);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`ja4ebpf: ${e.message}`);
      return 2;
    }
    throw e;
  }
  const noOutput = rowsGoNowhere(cfg);
  if (noOutput) {
    let file = values.config as string | undefined;
    if (file === undefined) file = DEFAULT_CONFIG_PATH;
    console.error(`ja4ebpf: ${file}: ${noOutput}`);
    return 2;
  }
  configureLog({ level: cfg.log.level, format: cfg.log.format });
  log.debug("configuration", { config: JSON.stringify(redacted(cfg)) });
  const agent = new Agent(cfg);
  let stopping: Promise<void> | undefined;
  const done = Promise.withResolvers<number>();
  const stop = (sig: string) => {
    log.info("stopping", { signal: sig });
    stopping ??= agent.stop().then(() => done.resolve(0), (e) => {
      log.error("stop failed", { error: String(e) });
      done.resolve(1);
    });
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  Deno.addSignalListener("SIGHUP", () => {
    agent.reload(values.config as string | undefined).catch((e) =>
      log.error("reload failed, keeping the running configuration", {
        error: e instanceof Error ? e.message : String(e),
      })
    );
  });
  try {
    await agent.start();
  } catch (e) {
    // A signal during start-up: the stop it started removes what was attached, then exits 0.
    if (e instanceof StartAbortedError) return await done.promise;
    log.error("start failed", { error: e instanceof Error ? e.message : String(e) });
    await agent.stop().catch(() => {});
    return 1;
  }
  return await done.promise;
}
