/**
 * The one FFI symbol table: libbpf (1.x, `libbpf.so.1`, falling back to `libbpf.so.0`), the few libc
 * calls the ring reader needs, and libcrypto's SHA-256 block function. Opened lazily so commands that never
 * touch BPF run without libbpf.
 * Only src/bpf/ uses it. Conventions: libbpf 1.x returns NULL or a negative errno and also sets errno;
 * u64/usize travel as BigInt; pointers are objects or null.
 */
import { log } from "../log.ts";

const LIBBPF_SYMBOLS = {
  libbpf_set_print: { parameters: ["pointer"], result: "pointer" },
  libbpf_major_version: { parameters: [], result: "u32", optional: true },
  libbpf_minor_version: { parameters: [], result: "u32", optional: true },
  libbpf_version_string: { parameters: [], result: "pointer", optional: true },
  libbpf_strerror: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  libbpf_probe_bpf_map_type: { parameters: ["u32", "pointer"], result: "i32" },
  libbpf_probe_bpf_prog_type: { parameters: ["u32", "pointer"], result: "i32" },
  // libbpf ≥ 0.8: 1 when the kernel offers the helper to that program type, 0 when not, < 0 on error.
  libbpf_probe_bpf_helper: { parameters: ["u32", "u32", "pointer"], result: "i32", optional: true },
  libbpf_num_possible_cpus: { parameters: [], result: "i32" },

  bpf_object__open_mem: { parameters: ["buffer", "usize", "pointer"], result: "pointer" },
  bpf_object__load: { parameters: ["pointer"], result: "i32" },
  bpf_object__close: { parameters: ["pointer"], result: "void" },
  bpf_object__find_program_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_object__next_program: { parameters: ["pointer", "pointer"], result: "pointer" },
  bpf_object__find_map_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_object__next_map: { parameters: ["pointer", "pointer"], result: "pointer" },

  bpf_object__btf: { parameters: ["pointer"], result: "pointer" },
  btf__find_by_name_kind: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  btf__type_by_id: { parameters: ["pointer", "u32"], result: "pointer" },
  btf__name_by_offset: { parameters: ["pointer", "u32"], result: "pointer" },

  bpf_program__name: { parameters: ["pointer"], result: "pointer" },
  bpf_program__section_name: { parameters: ["pointer"], result: "pointer" },
  bpf_program__set_autoload: { parameters: ["pointer", "bool"], result: "i32" },
  bpf_program__autoload: { parameters: ["pointer"], result: "bool" },
  bpf_program__fd: { parameters: ["pointer"], result: "i32" },
  bpf_program__type: { parameters: ["pointer"], result: "u32" },
  bpf_program__attach: { parameters: ["pointer"], result: "pointer" },
  bpf_program__attach_tracepoint: { parameters: ["pointer", "buffer", "buffer"], result: "pointer" },
  bpf_program__attach_raw_tracepoint: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_program__attach_trace: { parameters: ["pointer"], result: "pointer" },
  bpf_program__attach_kprobe: { parameters: ["pointer", "bool", "buffer"], result: "pointer" },
  bpf_program__attach_ksyscall: {
    parameters: ["pointer", "buffer", "buffer"],
    result: "pointer",
    optional: true,
  },
  // A perf event opened here (a tracefs kprobe event with our own maxactive): the link owns the fd.
  bpf_program__attach_perf_event: { parameters: ["pointer", "i32"], result: "pointer" },
  bpf_program__attach_uprobe_opts: {
    parameters: ["pointer", "i32", "buffer", "usize", "buffer"],
    result: "pointer",
  },
  // TCX links (libbpf ≥ 1.3): absent in 1.1, used when present.
  bpf_program__attach_tcx: { parameters: ["pointer", "i32", "pointer"], result: "pointer", optional: true },

  bpf_link__destroy: { parameters: ["pointer"], result: "i32" },
  bpf_link__fd: { parameters: ["pointer"], result: "i32" },
  bpf_obj_get_info_by_fd: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // The program of a tc filter found by handle (src/bpf/tc.ts: is that leftover ours?).
  // libbpf 0.7+: runs a loaded program on given input (the tc program's benchmark and tests).
  bpf_prog_test_run_opts: { parameters: ["i32", "buffer"], result: "i32", optional: true },
  bpf_prog_get_fd_by_id: { parameters: ["u32"], result: "i32" },

  bpf_map__name: { parameters: ["pointer"], result: "pointer" },
  bpf_map__fd: { parameters: ["pointer"], result: "i32" },
  bpf_map__type: { parameters: ["pointer"], result: "u32" },
  bpf_map__max_entries: { parameters: ["pointer"], result: "u32" },
  bpf_map__set_max_entries: { parameters: ["pointer", "u32"], result: "i32" },
  bpf_map__key_size: { parameters: ["pointer"], result: "u32" },
  bpf_map__value_size: { parameters: ["pointer"], result: "u32" },
  bpf_map__initial_value: { parameters: ["pointer", "buffer"], result: "pointer" },
  bpf_map__set_autocreate: { parameters: ["pointer", "bool"], result: "i32", optional: true },
  bpf_map__set_initial_value: { parameters: ["pointer", "buffer", "usize"], result: "i32" },
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  bpf_map_get_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },

  ring_buffer__new: { parameters: ["i32", "function", "pointer", "pointer"], result: "pointer" },
  ring_buffer__poll: { parameters: ["pointer", "i32"], result: "i32" },
  ring_buffer__consume: { parameters: ["pointer"], result: "i32" },
  ring_buffer__free: { parameters: ["pointer"], result: "void" },
  ring_buffer__epoll_fd: { parameters: ["pointer"], result: "i32" },

  perf_buffer__new: {
    parameters: ["i32", "usize", "function", "function", "pointer", "pointer"],
    result: "pointer",
  },
  perf_buffer__poll: { parameters: ["pointer", "i32"], result: "i32" },
  perf_buffer__consume: { parameters: ["pointer"], result: "i32" },
  perf_buffer__free: { parameters: ["pointer"], result: "void" },

  bpf_tc_hook_create: { parameters: ["buffer"], result: "i32" },
  bpf_tc_hook_destroy: { parameters: ["buffer"], result: "i32" },
  bpf_tc_attach: { parameters: ["buffer", "buffer"], result: "i32" },
  bpf_tc_detach: { parameters: ["buffer", "buffer"], result: "i32" },
  bpf_tc_query: { parameters: ["buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const LIBC_SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  vsnprintf: { parameters: ["buffer", "usize", "pointer", "pointer"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  // The same poll(2) on a worker thread: the ring reader's idle wait, so the event loop never blocks.
  poll_nb: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
  dup: { parameters: ["i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  getpid: { parameters: [], result: "i32" },
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  sysconf: { parameters: ["i32"], result: "i64" },
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "pointer"], result: "i32" },
  // syscall(SYS_perf_event_open, attr, pid, cpu, group_fd, flags): glibc has no wrapper.
  perf_event_open: {
    name: "syscall",
    parameters: ["i64", "buffer", "i32", "i32", "i32", "u64"],
    result: "i64",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * OpenSSL's SHA-256 block function, for JA4+'s hashes (src/fingerprint/sha.ts): with the CPU's SHA extensions
 * several times faster than SHA-256 in JavaScript. The low-level calls (in OpenSSL 1.1 and 3, deprecated in 3
 * but exported): the one-shot SHA256() of OpenSSL 3 fetches a provider on every call.
 */
const LIBCRYPTO_SYMBOLS = {
  SHA256_Init: { parameters: ["buffer"], result: "i32" },
  SHA256_Update: { parameters: ["buffer", "buffer", "usize"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libbpf = Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS>["symbols"];
export type Libcrypto = Deno.DynamicLibrary<typeof LIBCRYPTO_SYMBOLS>["symbols"];
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

let bpfLib: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS> | undefined;
let libcLib: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | undefined;
let libbpfSoname = "";
let printCb: Deno.UnsafeCallback<{ parameters: ["i32", "pointer", "pointer"]; result: "i32" }> | undefined;

/** libbpf could not be opened: the agent cannot run here. */
export class LibbpfMissingError extends Error {
  constructor(readonly tried: string[], cause: string) {
    super(`cannot open libbpf (tried ${tried.join(", ")}): ${cause}`);
    this.name = "LibbpfMissingError";
  }
}

/** The first of `names` that opens, with its name; else the last error's message. */
function openFirst<S extends Deno.ForeignLibraryInterface>(
  names: string[],
  symbols: S,
): { lib: Deno.DynamicLibrary<S>; soname: string } | { error: string } {
  let error = "";
  for (const name of names) {
    try {
      return { lib: Deno.dlopen(name, symbols), soname: name };
    } catch (e) {
      error = e instanceof Error ? e.message : String(e);
    }
  }
  return { error };
}

let cryptoLib: Deno.DynamicLibrary<typeof LIBCRYPTO_SYMBOLS> | null | undefined;
let libcryptoSoname = "";

/** OpenSSL's libcrypto (3, else 1.1), opened once; null where neither is there (or FFI is not allowed). */
export function libcrypto(): { symbols: Libcrypto; soname: string } | null {
  if (cryptoLib === undefined) {
    const r = openFirst(["libcrypto.so.3", "libcrypto.so.1.1"], LIBCRYPTO_SYMBOLS);
    cryptoLib = "lib" in r ? r.lib : null;
    if ("lib" in r) libcryptoSoname = r.soname;
  }
  return cryptoLib ? { symbols: cryptoLib.symbols, soname: libcryptoSoname } : null;
}

export function libc(): Libc {
  libcLib ??= Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  return libcLib.symbols;
}

/** Opens libbpf once; installs the print callback that forwards libbpf's messages to our logger. */
export function libbpf(): Libbpf {
  if (bpfLib) return bpfLib.symbols;
  const tried = ["libbpf.so.1", "libbpf.so.0"];
  const r = openFirst(tried, LIBBPF_SYMBOLS);
  if ("error" in r) throw new LibbpfMissingError(tried, r.error);
  bpfLib = r.lib;
  libbpfSoname = r.soname;
  installPrint(bpfLib.symbols);
  return bpfLib.symbols;
}

/** libbpf's version string ("v1.1") and the file opened. */
export function libbpfVersion(): { version: string; soname: string } {
  const l = libbpf();
  let version = "unknown";
  if (l.libbpf_version_string) {
    const p = l.libbpf_version_string();
    if (p) version = Deno.UnsafePointerView.getCString(p);
  } else if (l.libbpf_major_version && l.libbpf_minor_version) {
    version = `v${l.libbpf_major_version()}.${l.libbpf_minor_version()}`;
  }
  return { version, soname: libbpfSoname };
}

// libbpf print levels: 0 warn, 1 info, 2 debug.
let printBuf = new Uint8Array(4096);
/** Bytes of the platform's va_list (x86-64: 24, arm64: 32): copied so a long message can be formatted twice. */
const VA_LIST_BYTES = Deno.build.arch === "x86_64" ? 24 : 32;
const vaCopy = new Uint8Array(VA_LIST_BYTES);
/** A verifier log runs to megabytes: its head and its tail (where the refusal is) are kept. */
const MSG_HEAD = 2048;
const MSG_TAIL = 12288;
function clip(msg: string): string {
  return msg.length <= MSG_HEAD + MSG_TAIL ? msg : `${msg.slice(0, MSG_HEAD)}\n[…]\n${msg.slice(-MSG_TAIL)}`;
}
const dec = new TextDecoder();
/**
 * Warnings libbpf prints for conditions we handle, logged at debug level: bpf_tc_hook_create() asks for an
 * exclusive clsact qdisc and the kernel's extack says so when one is there already (EEXIST, which is fine).
 */
const HARMLESS = [/Exclusivity flag on, cannot modify/];
/** Lines libbpf printed at warn level since start (tests and --validate read them for context). */
export const libbpfWarnings: string[] = [];
let warnTotal = 0;
/** A mark for libbpfWarningsSince(). */
export function libbpfWarnMark(): number {
  return warnTotal;
}
/** Warnings libbpf printed since the mark (at most the 200 kept). */
export function libbpfWarningsSince(mark: number): string[] {
  const n = Math.min(warnTotal - mark, libbpfWarnings.length);
  return n > 0 ? libbpfWarnings.slice(-n) : [];
}

function installPrint(l: Libbpf): void {
  const c = libc();
  printCb = new Deno.UnsafeCallback(
    { parameters: ["i32", "pointer", "pointer"], result: "i32" } as const,
    (level, fmt, ap) => {
      // The va_list arrives as a pointer (x86-64, and arm64's by-reference struct): vsnprintf consumes it, so
      // a copy is kept to format again into a bigger buffer (a verifier log does not fit in 4 KiB).
      if (ap) vaCopy.set(new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ap, VA_LIST_BYTES)));
      let n = c.vsnprintf(printBuf, BigInt(printBuf.length), fmt, ap);
      if (ap && n >= printBuf.length) {
        printBuf = new Uint8Array(n + 1);
        n = c.vsnprintf(printBuf, BigInt(printBuf.length), fmt, Deno.UnsafePointer.of(vaCopy));
      }
      const len = Math.max(0, Math.min(n, printBuf.length - 1));
      const msg = clip(dec.decode(printBuf.subarray(0, len)).trimEnd());
      if (printBuf.length > 65536) printBuf = new Uint8Array(4096);
      if (level === 0 && !HARMLESS.some((re) => re.test(msg))) {
        warnTotal++;
        libbpfWarnings.push(msg);
        if (libbpfWarnings.length > 200) libbpfWarnings.shift();
        if (quiet > 0) log.debug(msg.startsWith("libbpf: ") ? msg : "libbpf: " + msg);
        else log.warn(msg.startsWith("libbpf: ") ? msg : "libbpf: " + msg);
      } else log.debug(msg.startsWith("libbpf: ") ? msg : "libbpf: " + msg);
      return n;
    },
  );
  l.libbpf_set_print(printCb.pointer);
}

let quiet = 0;
/** Runs fn with libbpf's warnings logged at debug level: probes expect refusals and report them. */
export function quietLibbpf<T>(fn: () => T): T {
  quiet++;
  try {
    return fn();
  } finally {
    quiet--;
  }
}

/** madvise(2) advice: reclaim these pages now (Linux 5.4+; older kernels answer EINVAL). */
export const MADV_PAGEOUT = 21;

/** madvise(addr, len, advice): 0, or the errno. */
export function madvise(addr: bigint, len: bigint, advice: number): number {
  return libc().madvise(Deno.UnsafePointer.create(addr), len, advice) === 0 ? 0 : errno() || 22;
}

/** Current errno, read right after a failing call. */
export function errno(): number {
  const p = libc().__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  28: "ENOSPC",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
  524: "ENOTSUPP",
};

export function errnoName(e: number): string {
  return ERRNO_NAMES[Math.abs(e)] ?? `E${Math.abs(e)}`;
}

/** Text for an errno, libbpf's own codes (4000+) included. */
export function strerror(e: number): string {
  const buf = new Uint8Array(256);
  try {
    libbpf().libbpf_strerror(Math.abs(e), buf, 256n);
  } catch {
    return `errno ${Math.abs(e)}`;
  }
  const n = buf.indexOf(0);
  return dec.decode(buf.subarray(0, n < 0 ? buf.length : n));
}

/** A libbpf or kernel refusal: which operation, the errno and its text. */
export class BpfError extends Error {
  readonly errno: number;
  constructor(readonly op: string, errnoValue: number, detail?: string) {
    const e = Math.abs(errnoValue);
    super(`${op}${detail ? ` (${detail})` : ""}: ${strerror(e)} [${errnoName(e)}]`);
    this.name = "BpfError";
    this.errno = e;
  }
  /** "EPERM: Operation not permitted", the form --validate prints. */
  get errnoText(): string {
    return `${errnoName(this.errno)}: ${strerror(this.errno)}`;
  }
}

/** Throws a BpfError for a negative libbpf return; passes non-negative values through. */
export function check(op: string, rc: number, detail?: string): number {
  if (rc < 0) throw new BpfError(op, -rc, detail);
  return rc;
}

/** Throws a BpfError (from errno) when libbpf returned NULL. */
export function checkPtr(op: string, p: Deno.PointerValue, detail?: string): Deno.PointerObject {
  if (p === null) throw new BpfError(op, errno() || 22, detail);
  return p;
}

const enc = new TextEncoder();
/** A NUL-terminated copy of a string for `buffer` parameters. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(enc.encode(s).length + 1);
  enc.encodeInto(s, b);
  return b;
}

export function readCString(p: Deno.PointerValue): string {
  return p ? Deno.UnsafePointerView.getCString(p) : "";
}

let page = 0;
export function pageSize(): number {
  if (!page) page = Number(libc().sysconf(30 /* _SC_PAGESIZE */)) || 4096;
  return page;
}

// bpf_map_type / bpf_prog_type values used here (uapi/linux/bpf.h).
export const MapType = {
  HASH: 1,
  ARRAY: 2,
  PERF_EVENT_ARRAY: 4,
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  LRU_HASH: 9,
  LRU_PERCPU_HASH: 10,
  RINGBUF: 27,
} as const;

// bpf_func_id values probed (uapi/linux/bpf.h).
export const BpfFunc = {
  GET_CURRENT_TASK_BTF: 158,
  TASK_PT_REGS: 175,
} as const;

export const ProgType = {
  KPROBE: 2,
  SCHED_CLS: 3,
  TRACEPOINT: 5,
  RAW_TRACEPOINT: 17,
  TRACING: 26,
} as const;
