/**
 * The agent's last resort for an exception nothing caught: log it, stop cleanly, exit 1.
 */
import { log } from "../log.ts";

/**
 * An exception nothing caught (an unhandled rejection, a throw in a timer) would end the process at once:
 * TC filters stay attached (they outlive the process), rows held in memory are lost uncounted. Instead: log
 * it, run `stop` (detach, flush into the spool), and exit 1 so systemd restarts the agent (Restart=on-failure)
 * and the spool is replayed. Returns the uninstaller.
 */
export function installFatalHandler(
  stop: () => Promise<void>,
  exit: (code: number) => void = (code) => Deno.exit(code),
  graceMs = 25_000,
): () => void {
  let fatal = false;
  const onFatal = (e: Event) => {
    e.preventDefault();
    const err = e instanceof PromiseRejectionEvent ? e.reason : (e as ErrorEvent).error;
    log.error("uncaught error: stopping", {
      error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    if (fatal) return;
    fatal = true;
    // Bounded: a stop that hangs must still end the process before systemd's TimeoutStopSec.
    const t = setTimeout(() => exit(1), graceMs);
    stop().catch((s) => log.error("stop failed", { error: String(s) })).finally(() => {
      clearTimeout(t);
      exit(1);
    });
  };
  globalThis.addEventListener("unhandledrejection", onFatal);
  globalThis.addEventListener("error", onFatal);
  return () => {
    globalThis.removeEventListener("unhandledrejection", onFatal);
    globalThis.removeEventListener("error", onFatal);
  };
}
