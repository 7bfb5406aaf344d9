/**
 * What the kernel and this process offer, probed rather than inferred from a version: BTF, tracefs
 * (mounted if allowed), kallsyms symbols, kprobe PMU, ring buffers, capabilities, libbpf, libapr.
 */
import { libbpfVersion } from "./ffi.ts";
import { ensureTracefs, type TracefsState } from "./tracefs.ts";
import { probeRingbuf } from "./object.ts";
import { findLibrary, symbolOffset } from "./elf.ts";

export const CAPS = {
  CAP_NET_ADMIN: 12,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_ADMIN: 21,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
} as const;
export type CapName = keyof typeof CAPS;

/** Effective capabilities from a /proc/PID/status text. */
export function parseCapEff(status: string): Record<CapName, boolean> & { raw: string } {
  const m = status.match(/^CapEff:\s*([0-9a-fA-F]+)/m);
  const v = m ? BigInt("0x" + m[1]) : 0n;
  const out = { raw: m ? m[1] : "" } as Record<CapName, boolean> & { raw: string };
  for (const [name, bit] of Object.entries(CAPS)) out[name as CapName] = ((v >> BigInt(bit)) & 1n) === 1n;
  return out;
}

export type { TracefsState } from "./tracefs.ts";

/** Finds tracefs (needed to attach tracepoints by name); mounts it at /sys/kernel/tracing if allowed. */
export function probeTracefs(mountIfMissing = true): Promise<TracefsState> {
  return Promise.resolve(ensureTracefs(mountIfMissing));
}

/**
 * Reads a procfs file with synchronous 128 KiB reads: /proc/kallsyms (5 MB, served ~4 KB per read) took
 * 15–27 s through readTextFile or async reads, ~50 ms this way.
 */
function readProcFile(path: string): string {
  using f = Deno.openSync(path);
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(1 << 17);
  let total = 0;
  for (;;) {
    const n = f.readSync(buf);
    if (n === null || n === 0) break;
    chunks.push(buf.slice(0, n));
    total += n;
  }
  const all = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return new TextDecoder().decode(all);
}

/** Which of `names` /proc/kallsyms lists (names stay visible even when addresses are hidden). */
export function probeKallsyms(names: string[]): Record<string, boolean> {
  const out: Record<string, boolean> = Object.fromEntries(names.map((n) => [n, false]));
  let text = "";
  try {
    text = readProcFile("/proc/kallsyms");
  } catch {
    return out;
  }
  const want = new Set(names);
  let i = 0;
  while (i < text.length) {
    let nl = text.indexOf("\n", i);
    if (nl < 0) nl = text.length;
    // "ffffffff81e31730 T __x64_sys_recvfrom" (+ "\t[module]"): the name is the third field.
    const name = text.slice(i, nl).split(/[ \t]/)[2];
    if (name !== undefined && want.has(name)) out[name] = true;
    i = nl + 1;
  }
  return out;
}

/**
 * The syscall numbers the raw_tp/tp_btf programs filter on (`nr_recvfrom`, `nr_read` in .rodata): fixed by
 * each architecture's ABI, and the agent runs under the kernel's own ABI. x86-64 numbers its syscalls itself;
 * arm64 uses the generic table (include/uapi/asm-generic/unistd.h).
 */
export const SYSCALL_NUMBERS: Partial<Record<typeof Deno.build.arch, { recvfrom: number; read: number }>> = {
  x86_64: { recvfrom: 45, read: 0 },
  aarch64: { recvfrom: 207, read: 63 },
};

export function syscallPrefix(): string {
  return Deno.build.arch === "x86_64" ? "__x64_sys_" : "__arm64_sys_";
}

export interface LibaprInfo {
  path: string | null;
  source?: string;
  symbol: string;
  offset?: number;
  error?: string;
}

export async function probeLibapr(override?: string): Promise<LibaprInfo> {
  const symbol = "apr_socket_recv";
  const loc = override ? { path: override, source: "config" } : await findLibrary("libapr-1.so.0");
  if (!loc) {
    return {
      path: null,
      symbol,
      error: "libapr-1.so.0 not found (process maps, ld.so.cache, /lib, /usr/lib)",
    };
  }
  try {
    const s = await symbolOffset(loc.path, symbol);
    return { path: loc.path, source: loc.source, symbol, offset: s.offset };
  } catch (e) {
    return { path: loc.path, source: loc.source, symbol, error: e instanceof Error ? e.message : String(e) };
  }
}

export interface Environment {
  kernel: string;
  arch: string;
  btf: boolean;
  tracefs: TracefsState;
  kprobePmu: boolean;
  kallsyms: Record<string, boolean>;
  ringbuf: boolean;
  libbpf: { version: string; soname: string };
  capabilities: Record<CapName, boolean> & { raw: string };
  /** Loading BPF needs CAP_BPF (+CAP_PERFMON for tracing) or CAP_SYS_ADMIN. */
  canLoad: boolean;
  libapr: LibaprInfo;
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

export async function probeEnvironment(
  opts: { mountTracefs?: boolean; libaprPath?: string } = {},
): Promise<Environment> {
  const pre = syscallPrefix();
  const caps = parseCapEff(await Deno.readTextFile("/proc/self/status"));
  return {
    kernel: Deno.osRelease(),
    arch: Deno.build.arch,
    btf: await exists("/sys/kernel/btf/vmlinux"),
    tracefs: await probeTracefs(opts.mountTracefs ?? true),
    kprobePmu: await exists("/sys/bus/event_source/devices/kprobe"),
    kallsyms: probeKallsyms([`${pre}recvfrom`, "__sys_recvfrom", `${pre}read`, "tcp_recvmsg"]),
    ringbuf: probeRingbuf(),
    libbpf: libbpfVersion(),
    capabilities: caps,
    canLoad: caps.CAP_SYS_ADMIN || (caps.CAP_BPF && caps.CAP_PERFMON),
    libapr: await probeLibapr(opts.libaprPath),
  };
}
