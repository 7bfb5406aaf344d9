/**
 * tracefs, found or mounted: shared by the agent, --validate, scripts/setup.sh (through `deno eval`) and the
 * BPF tests, so all of them see the kernel the same way on a host as it boots.
 */
import { cstr, errno, errnoName, libc, strerror } from "./ffi.ts";

/** Where tracefs is found: its own mount point, then under debugfs (where libbpf looks first). */
export const TRACEFS_PATHS = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] as const;

export interface TracefsState {
  path: string | null;
  /** This call mounted it. */
  mounted: boolean;
  error?: string;
}

function isDir(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Makes sure tracefs is there: libbpf reads a tracepoint's id from `events/<category>/<name>/id` under it, and
 * kprobe/uprobe events are written there. A freshly booted host without systemd's sys-kernel-tracing.mount
 * (containers, minimal images) has nothing at /sys/kernel/tracing: tracefs is mounted there when this process
 * may (CAP_SYS_ADMIN, no seccomp filter on mount); otherwise the error says why. The agent, --validate,
 * scripts/setup.sh and the BPF tests all go through this.
 */
export function ensureTracefs(mountIfMissing = true): TracefsState {
  for (const p of TRACEFS_PATHS) if (isDir(`${p}/events`)) return { path: p, mounted: false };
  if (!mountIfMissing) return { path: null, mounted: false, error: "tracefs not mounted" };
  const target = TRACEFS_PATHS[0];
  const rc = libc().mount(cstr("tracefs"), cstr(target), cstr("tracefs"), 0n, null);
  const e = rc === 0 ? 0 : errno();
  if (rc === 0 && isDir(`${target}/events`)) return { path: target, mounted: true };
  return { path: null, mounted: false, error: `mount tracefs on ${target}: ${errnoName(e)}: ${strerror(e)}` };
}
