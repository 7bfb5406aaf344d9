/**
 * The agent's final load: the plan's programs plus optional sets (HTTPS plaintext, Apache uprobes for a later
 * attach). A set the kernel refuses costs its feature only: the load is retried with fewer sets, down to the
 * plan alone, whose failure is the agent's.
 */
import type { PlannedObject } from "./plan.ts";

export interface OptionalPrograms {
  /** SSL uprobes (and the read tracepoints that teach them fds); empty = not wanted. */
  tls: readonly string[];
  /** apr_socket_recv uprobes loaded for a later attach; empty = not wanted. */
  apr: readonly string[];
}

export interface FallbackLoad {
  planned: PlannedObject;
  /** Which optional sets were loaded. */
  tls: boolean;
  apr: boolean;
  /** Why a wanted set was left out (the last refusal that included it); nothing for sets loaded. */
  errors: { tls?: string; apr?: string };
}

/** Verifier EAGAIN (a busy kernel) is transient: the same set is tried this many times in all. */
export const EAGAIN_ATTEMPTS = 3;

const message = (e: unknown) => e instanceof Error ? e.message : String(e);

/**
 * Opens with both optional sets, then TLS only, then Apache only, then none; sets not wanted are skipped.
 * `open(loadOnly)` is openPlanned with the extra programs; its error without any optional set is thrown.
 */
export function loadWithFallback(
  open: (loadOnly: string[]) => PlannedObject,
  optional: OptionalPrograms,
): FallbackLoad {
  const errors: FallbackLoad["errors"] = {};
  for (const [tls, apr] of [[true, true], [true, false], [false, true], [false, false]]) {
    if (tls && !optional.tls.length) continue;
    if (apr && !optional.apr.length) continue;
    const progs = [...(tls ? optional.tls : []), ...(apr ? optional.apr : [])];
    try {
      for (let attempt = 1;; attempt++) {
        try {
          const planned = open(progs);
          // Errors are kept for the sets left out only (a combined refusal names both).
          if (tls) delete errors.tls;
          if (apr) delete errors.apr;
          return { planned, tls, apr, errors };
        } catch (e) {
          if (attempt >= EAGAIN_ATTEMPTS || !message(e).includes("EAGAIN")) throw e;
        }
      }
    } catch (e) {
      if (!tls && !apr) throw e;
      if (tls) errors.tls = message(e);
      if (apr) errors.apr = message(e);
    }
  }
  throw new Error("unreachable: the plan-only load neither returned nor threw");
}
