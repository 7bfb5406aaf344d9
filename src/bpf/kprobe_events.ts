/**
 * kretprobes created through tracefs (`kprobe_events`) rather than libbpf's kprobe PMU. Only the tracefs
 * interface takes a maxactive (`r<N>:`): how many calls of the probed function may be pending at once. The
 * kernel's default, max(10, 2 × CPUs), is used up by idle processes blocked in recvfrom, and every later
 * return is then missed without a trace. Misses are read back from `kprobe_profile`, which lists tracefs
 * events only (not the PMU's); perf link info reports them from 6.7 only.
 */
import { BpfError, errno, libbpf, libc } from "./ffi.ts";
import { ensureTracefs, TRACEFS_PATHS } from "./tracefs.ts";
import { type BpfProgram, Link } from "./object.ts";
import { probeKallsyms, syscallPrefix } from "./probes.ts";

/** The kernel refuses a larger maxactive (KRETPROBE_MAXACTIVE_MAX in kernel/trace/trace_kprobe.c). */
export const KRETPROBE_MAXACTIVE_MAX = 4096;
/**
 * Default: the kernel's ceiling. Instances are preallocated (some tens of bytes each, well under 1 MiB for
 * 4096) and each is held only while one call is inside recvfrom.
 */
export const DEFAULT_KRETPROBE_MAXACTIVE = KRETPROBE_MAXACTIVE_MAX;
/** Overrides the default (tests force a tiny value to provoke misses). */
export const MAXACTIVE_ENV = "JA4EBPF_KRETPROBE_MAXACTIVE";
/** Our events: `ja4ebpf_<pid>_<start time>_<syscall>[_<n>]`, in the "kprobes" group (see eventOwner). */
export const EVENT_PREFIX = "ja4ebpf_";
const GROUP = "kprobes";

/** A maxactive that is not a positive integer (configuration or environment). */
export class MaxactiveError extends Error {
  constructor(readonly value: string) {
    super(`kretprobe maxactive must be a positive integer, got '${value}'`);
    this.name = "MaxactiveError";
  }
}

/** The maxactive to ask for: explicit value, else $JA4EBPF_KRETPROBE_MAXACTIVE, else 4096; capped at 4096. */
export function kretprobeMaxactive(value?: number, env?: string): number {
  let raw: string | undefined = value === undefined ? env : String(value);
  if (raw === undefined && value === undefined) {
    try {
      raw = Deno.env.get(MAXACTIVE_ENV);
    } catch {
      raw = undefined; // no env permission: the default
    }
  }
  if (raw === undefined || raw.trim() === "") return DEFAULT_KRETPROBE_MAXACTIVE;
  const n = Number(raw.trim());
  if (!Number.isInteger(n) || n < 1) throw new MaxactiveError(raw);
  return Math.min(n, KRETPROBE_MAXACTIVE_MAX);
}

export interface ProbeEvent {
  kind: "p" | "r";
  maxactive?: number;
  group: string;
  event: string;
  target: string;
}

/** Lines of `kprobe_events`: "r4096:kprobes/ja4ebpf_12_recvfrom __x64_sys_recvfrom" (fetch args ignored). */
export function parseProbeEvents(text: string): ProbeEvent[] {
  const out: ProbeEvent[] = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^([pr])(\d*):([^/\s]+)\/(\S+)\s+(\S+)/);
    if (!m) continue;
    out.push({
      kind: m[1] as "p" | "r",
      ...(m[2] ? { maxactive: Number(m[2]) } : {}),
      group: m[3],
      event: m[4],
      target: m[5],
    });
  }
  return out;
}

/** `kprobe_profile`: event name → hits and misses (columns: event, hits, misses). */
export function parseProfile(text: string): Map<string, { hits: number; missed: number }> {
  const out = new Map<string, { hits: number; missed: number }>();
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 3 || !/^\d+$/.test(f[1]) || !/^\d+$/.test(f[2])) continue;
    out.set(f[0], { hits: Number(f[1]), missed: Number(f[2]) });
  }
  return out;
}

/** The pid in one of our event names, or undefined for another tool's event. */
export function eventPid(event: string): number | undefined {
  return eventOwner(event)?.pid;
}

/**
 * Who made one of our events: `ja4ebpf_<pid>_<start>_<syscall>` names the process by pid and start time
 * (clock ticks since boot, /proc/PID/stat field 22), so a pid reused by another process is told apart.
 * Names of older versions carry the pid alone (start undefined).
 */
export function eventOwner(event: string): { pid: number; start?: string } | undefined {
  const m = event.match(/^ja4ebpf_(\d+)_(?:(\d+)_)?[a-z]/);
  if (!m) return undefined;
  return m[2] === undefined ? { pid: Number(m[1]) } : { pid: Number(m[1]), start: m[2] };
}

/** A process's start time (field 22 of /proc/PID/stat), or undefined when it is gone. */
export function procStartTime(pid: number): string | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * Our events that no live agent owns: its process is gone, or the pid now belongs to another process
 * (start time differs). Events of older versions name no start time: they are candidates too, and the
 * kernel keeps those still attached (removing an event in use fails with EBUSY).
 */
export function staleEvents(
  events: ProbeEvent[],
  startOf: (pid: number) => string | undefined,
): ProbeEvent[] {
  return events.filter((e) => {
    const o = eventOwner(e.event);
    if (!o || active.has(e.event)) return false;
    if (o.start === undefined) return true;
    return startOf(o.pid) !== o.start;
  });
}

/** tracefs with kprobe events (see ensureTracefs), or null. */
export function findKprobeTracefs(): string | null {
  ensureTracefs();
  for (const p of TRACEFS_PATHS) {
    try {
      if (Deno.statSync(`${p}/kprobe_events`).isFile) return p;
    } catch {
      // not there
    }
  }
  return null;
}

/** The errno of a Deno I/O error ("… (os error 16)"), else fallback. */
function osErrno(e: unknown, fallback = 5): number {
  const m = e instanceof Error ? e.message.match(/os error (\d+)/) : null;
  if (m) return Number(m[1]);
  if (e instanceof Deno.errors.NotFound) return 2;
  if (e instanceof Deno.errors.PermissionDenied) return 13;
  if (e instanceof Deno.errors.AlreadyExists) return 17;
  if (e instanceof Deno.errors.Busy) return 16;
  return fallback;
}

/** kprobe_events, or uprobe_events (same syntax; the tests use it where kprobes are compiled out). */
export type EventsFile = "kprobe_events" | "uprobe_events";

/** Appends one command (O_WRONLY|O_APPEND: a truncating write would remove every probe of the system). */
export function writeEvents(tracefs: string, line: string, file: EventsFile = "kprobe_events"): void {
  try {
    using f = Deno.openSync(`${tracefs}/${file}`, { write: true, append: true });
    f.writeSync(new TextEncoder().encode(line + "\n"));
  } catch (e) {
    throw new BpfError(file, osErrno(e), line);
  }
}

/** Removes one event; false when the kernel refused (still in use) or it was already gone. */
export function removeEvent(
  tracefs: string,
  event: string,
  group = GROUP,
  file: EventsFile = "kprobe_events",
): boolean {
  try {
    writeEvents(tracefs, `-:${group}/${event}`, file);
    return true;
  } catch {
    return false;
  }
}

let cleaned = false;
/**
 * Removes our events left by dead agents (attach does it once per process; `ja4ebpf cleanup` too). Returns
 * the names removed.
 */
export function removeStaleEvents(tracefs: string, file: EventsFile = "kprobe_events"): string[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(`${tracefs}/${file}`);
  } catch {
    return [];
  }
  return staleEvents(parseProbeEvents(text), procStartTime)
    .filter((e) => removeEvent(tracefs, e.event, e.group, file))
    .map((e) => e.event);
}

const wrappers = new Map<string, string | null>();
/**
 * The kernel function of a syscall as kallsyms names it: the arch wrapper (`__x64_sys_recvfrom`,
 * `__arm64_sys_recvfrom`), else `__se_sys_recvfrom` / `sys_recvfrom` (kernels without wrappers). Only the
 * return value is read, which every one of them returns alike.
 */
export function syscallFunction(syscall: string): string | null {
  if (wrappers.has(syscall)) return wrappers.get(syscall)!;
  const candidates = [`${syscallPrefix()}${syscall}`, `__se_sys_${syscall}`, `sys_${syscall}`];
  const found = probeKallsyms(candidates);
  const fn = candidates.find((c) => found[c]) ?? null;
  wrappers.set(syscall, fn);
  return fn;
}

const SYS_PERF_EVENT_OPEN: Partial<Record<typeof Deno.build.arch, number>> = { x86_64: 298, aarch64: 241 };

/** perf_event_open(PERF_TYPE_TRACEPOINT, config = id) on CPU 0 for every process, as libbpf does. */
export function perfEventOpenTracepoint(id: number): number {
  const nr = SYS_PERF_EVENT_OPEN[Deno.build.arch];
  if (nr === undefined) throw new BpfError("perf_event_open", 38, `no syscall number for ${Deno.build.arch}`);
  // struct perf_event_attr, PERF_ATTR_SIZE_VER5 (112 bytes, accepted since 4.1): type@0, size@4, config@8.
  const attr = new Uint8Array(112);
  const dv = new DataView(attr.buffer);
  dv.setUint32(0, 2, true); // PERF_TYPE_TRACEPOINT
  dv.setUint32(4, attr.length, true);
  dv.setBigUint64(8, BigInt(id), true);
  // The BPF program runs on every CPU: it hangs off the event, not this per-CPU perf event.
  const fd = Number(libc().perf_event_open(BigInt(nr), attr, -1, 0, -1, 8n /* PERF_FLAG_FD_CLOEXEC */));
  if (fd < 0) throw new BpfError("perf_event_open", errno() || 22, `tracepoint id ${id}`);
  return fd;
}

/** Names of events this process holds. */
const active = new Set<string>();

/** A kretprobe link on an event we created in kprobe_events: its misses come from kprobe_profile. */
export class KprobeEventLink extends Link {
  constructor(
    ptr: Deno.PointerObject,
    description: string,
    readonly tracefs: string,
    readonly event: string,
    readonly maxactive: number,
  ) {
    super(ptr, description, "kretprobe");
  }
  /** Returns missed calls so far (maxactive exhausted or the kprobe itself missed), or undefined. */
  override nmissed(): number | undefined {
    if (this.closed) return undefined;
    try {
      return parseProfile(Deno.readTextFileSync(`${this.tracefs}/kprobe_profile`)).get(this.event)?.missed;
    } catch {
      return undefined;
    }
  }
  /** Hits so far (kprobe_profile's second column). */
  hits(): number | undefined {
    if (this.closed) return undefined;
    try {
      return parseProfile(Deno.readTextFileSync(`${this.tracefs}/kprobe_profile`)).get(this.event)?.hits;
    } catch {
      return undefined;
    }
  }
  /** Detaches (libbpf closes the perf event), then removes the event: the kernel refuses while it is open. */
  override close(): void {
    if (this.closed) return;
    super.close();
    removeEvent(this.tracefs, this.event);
    active.delete(this.event);
  }
}

export interface KretprobeEventOptions {
  syscall: string;
  maxactive: number;
  /** tracefs root; default: found. null: none, use libbpf's PMU kretprobe. */
  tracefs?: string | null;
}

/**
 * Attaches a kretprobe program to a syscall's return through a tracefs event with our maxactive. Without
 * tracefs kprobe events (or when writing them is not permitted) falls back to libbpf's PMU kretprobe
 * (default maxactive, misses readable on ≥ 6.7 through link info).
 */
export function attachKretprobeEvent(prog: BpfProgram, o: KretprobeEventOptions): Link {
  const tracefs = o.tracefs === undefined ? findKprobeTracefs() : o.tracefs;
  if (!tracefs) return prog.attachKsyscall(o.syscall, true);
  if (!cleaned) {
    cleaned = true;
    removeStaleEvents(tracefs);
  }
  const fn = syscallFunction(o.syscall);
  if (!fn) throw new BpfError("kallsyms", 2, `no kernel function for syscall ${o.syscall}`);
  const maxactive = Math.min(Math.max(1, Math.floor(o.maxactive)), KRETPROBE_MAXACTIVE_MAX);
  const event = freeEventName(tracefs, o.syscall);
  try {
    writeEvents(tracefs, `r${maxactive}:${GROUP}/${event} ${fn}`);
  } catch (e) {
    // Locked down or read-only tracefs: libbpf's PMU kprobe may still be allowed.
    if (e instanceof BpfError && [1, 13, 30].includes(e.errno)) return prog.attachKsyscall(o.syscall, true);
    throw e;
  }
  active.add(event);
  try {
    const p = attachTracefsEvent(prog, tracefs, GROUP, event);
    const link = new KprobeEventLink(
      p,
      `${prog.name} → kretprobe ${fn} (maxactive ${maxactive})`,
      tracefs,
      event,
      maxactive,
    );
    prog.obj.track(link);
    return link;
  } catch (e) {
    removeEvent(tracefs, event);
    active.delete(event);
    throw e;
  }
}

/**
 * Opens a perf event on a tracefs event (a kprobe or uprobe event, a tracepoint) and attaches prog to it, as
 * libbpf's legacy kprobes do. Returns libbpf's link, which owns the perf event fd (closed on destroy).
 */
export function attachTracefsEvent(
  prog: BpfProgram,
  tracefs: string,
  group: string,
  event: string,
): Deno.PointerObject {
  let id: number;
  try {
    id = Number(Deno.readTextFileSync(`${tracefs}/events/${group}/${event}/id`).trim());
  } catch (e) {
    throw new BpfError("tracefs event id", osErrno(e, 2), `${group}/${event}`);
  }
  const pfd = perfEventOpenTracepoint(id);
  const p = libbpf().bpf_program__attach_perf_event(prog.ptr, pfd);
  if (p === null) {
    const e = errno() || 22;
    libc().close(pfd);
    throw new BpfError("bpf_program__attach_perf_event", e, `${prog.name} → ${group}/${event}`);
  }
  return p;
}

/**
 * `ja4ebpf_<pid>_<start>_<syscall>`, or with a suffix when this process holds it already or a leftover will
 * not go.
 */
function freeEventName(tracefs: string, syscall: string): string {
  const start = procStartTime(Deno.pid) ?? "0";
  for (let n = 0;; n++) {
    const name = `${EVENT_PREFIX}${Deno.pid}_${start}_${syscall}${n ? `_${n}` : ""}`;
    if (active.has(name)) continue;
    let exists = true;
    try {
      Deno.statSync(`${tracefs}/events/${GROUP}/${name}`);
    } catch {
      exists = false;
    }
    // Same pid and start time: a leftover of this process (an earlier object) is ours to remove.
    if (exists && !removeEvent(tracefs, name)) continue;
    return name;
  }
}
