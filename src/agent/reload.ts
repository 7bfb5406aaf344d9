/**
 * SIGHUP: the configuration is read again; logging and privacy apply at once, every other changed key is
 * named as needing a restart (the capture, the sinks and the correlator keep their running values).
 */
import { changedKeys, type Config, loadConfig } from "../config/config.ts";
import { configureLog, log } from "../log.ts";
import { makeRedactor, type OutputSink } from "../sink/mod.ts";

/** What reload() applies without a restart; any other changed key is reported as needing one. */
export const APPLIED_ON_RELOAD = ["log.", "privacy."];

export interface ReloadKeys {
  /** Changed keys applied now. */
  now: string[];
  /** Changed keys that take effect at the next start. */
  later: string[];
}

/** The keys that differ between the running and the new configuration, split by when they apply. */
export function reloadKeys(running: Config, next: Config): ReloadKeys {
  const changed = changedKeys(running, next);
  // Only what is really applied below is reported as applied; the rest takes effect at the next start.
  const now = changed.filter((k) => APPLIED_ON_RELOAD.some((p) => k.startsWith(p)));
  const later = changed.filter((k) => !now.includes(k));
  return { now, later };
}

/**
 * Re-reads the configuration at `path` and applies what can change without a restart into the running
 * configuration (`cfg.log`, `cfg.privacy`, replaced in place), the log settings and the outputs' privacy
 * filter; other changed keys are named in a warning. Throws (nothing applied) when the file is invalid.
 */
export async function reloadConfig(cfg: Config, path?: string, outputs?: OutputSink): Promise<ReloadKeys> {
  const next = await loadConfig(path);
  const { now, later } = reloadKeys(cfg, next);
  if (now.some((k) => k.startsWith("log."))) {
    configureLog({ level: next.log.level, format: next.log.format });
  }
  if (now.some((k) => k.startsWith("privacy.")) && outputs) {
    outputs.setRedactor(await makeRedactor(next.privacy));
  }
  cfg.log = next.log;
  cfg.privacy = next.privacy;
  log.info("configuration reloaded", { applied: now.join(",") || "none", needs_restart: later.join(",") });
  if (later.length) {
    log.warn("configuration changes need a restart to take effect", { keys: later.join(",") });
  }
  return { now, later };
}
