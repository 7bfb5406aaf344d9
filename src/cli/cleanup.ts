/**
 * `ja4ebpf cleanup`: removes what an agent that did not stop cleanly (SIGKILL, OOM kill, crash) left in the
 * kernel. Programs, maps and fd-based links go with the process; classic tc filters and tracefs probe events
 * do not. Run by the unit's ExecStopPost and by the package's removal; a live agent's are never touched.
 */
import { parseFlags } from "./args.ts";
import { ConfigError, DEFAULT_CONFIG, DEFAULT_CONFIG_PATH, loadConfig } from "../config/config.ts";
import { claimTc, PROBE_TC, sweepTc, type TcClaim, TcHandleBusyError, type TcIdentity } from "../bpf/tc.ts";
import { findKprobeTracefs, removeStaleEvents } from "../bpf/kprobe_events.ts";

const USAGE = `Usage: ja4ebpf cleanup [--config FILE]
  Removes the tc filters of ja4ebpf agents that are no longer running (capture.tc_handle from the config,
  and the start-up probe's) on every interface, and their tracefs probe events. A running agent's filters
  are left alone. Exit 0 when nothing is left behind.
  --config FILE   where capture.tc_handle is read (default ${DEFAULT_CONFIG_PATH}; missing: the default handle)`;

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseFlags(args, { config: { type: "string", short: "c" } }, USAGE);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  let handle = DEFAULT_CONFIG.capture.tc_handle;
  try {
    handle = (await loadConfig(values.config as string | undefined)).capture.tc_handle;
  } catch (e) {
    // A broken or removed config must not keep the leftovers in place: sweep the default handle.
    if (!(e instanceof ConfigError)) throw e;
    console.error(`ja4ebpf cleanup: ${e.message.split("\n")[0]}; using the default tc handle`);
  }
  let failed = false;
  for (const id of [{ handle, priority: handle }, PROBE_TC] as TcIdentity[]) {
    let claim: TcClaim;
    try {
      claim = claimTc(id);
    } catch (e) {
      if (!(e instanceof TcHandleBusyError)) throw e;
      console.error(`ja4ebpf cleanup: ${e.message.replace(/: stop it.*$/, "")}: its filters are left alone`);
      continue;
    }
    try {
      const { removed, errors } = sweepTc([id]);
      for (const f of removed) {
        console.error(
          `ja4ebpf cleanup: removed tc filter handle 0x${
            f.handle.toString(16)
          } on ${f.iface} (program ${f.progId})`,
        );
      }
      for (const err of errors) console.error(`ja4ebpf cleanup: ${err}`);
      failed ||= errors.length > 0;
    } finally {
      claim.release();
    }
  }
  const tracefs = findKprobeTracefs();
  if (tracefs) {
    for (const ev of removeStaleEvents(tracefs)) console.error(`ja4ebpf cleanup: removed probe event ${ev}`);
  }
  return failed ? 1 : 0;
}
