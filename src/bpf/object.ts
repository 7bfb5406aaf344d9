/**
 * A BPF object opened from memory: globals and ring sizes set before load, programs enabled or not,
 * attach handles that are always closed, map access. Every libbpf refusal becomes a BpfError.
 */
import { BpfError, check, checkPtr, cstr, errno, libbpf, libc, MapType, readCString } from "./ffi.ts";

/** Anything attached: closing it detaches. Idempotent. */
export interface AttachHandle extends Disposable {
  readonly description: string;
  close(): void;
}

/** A libbpf link (tracepoint, raw_tp, fexit, kprobe, uprobe…). */
export class Link implements AttachHandle {
  #ptr: Deno.PointerObject | null;
  constructor(ptr: Deno.PointerObject, readonly description: string, readonly kind: string) {
    this.#ptr = ptr;
  }
  get closed(): boolean {
    return this.#ptr === null;
  }
  get fd(): number {
    if (!this.#ptr) throw new BpfError("bpf_link__fd", 9, this.description);
    return libbpf().bpf_link__fd(this.#ptr);
  }
  /**
   * Returns the kernel's count of missed kretprobe returns (perf link info, kernel ≥ 6.7), or undefined
   * when the kernel does not report it.
   */
  nmissed(): number | undefined {
    if (!this.#ptr || (this.kind !== "kprobe" && this.kind !== "kretprobe")) return undefined;
    // struct bpf_link_info: type@0; union@16: perf_event.type@16, kprobe {func_name@24, name_len@32,
    // offset@36, addr@40, missed@48}. BPF_LINK_TYPE_PERF_EVENT = 7, BPF_PERF_EVENT_KRETPROBE = 2/KPROBE = 1.
    const info = new Uint8Array(128);
    const len = new Uint32Array([info.length]);
    const rc = libbpf().bpf_obj_get_info_by_fd(this.fd, info, new Uint8Array(len.buffer));
    if (rc < 0) return undefined;
    const dv = new DataView(info.buffer);
    if (dv.getUint32(0, true) !== 7) return undefined;
    const pt = dv.getUint32(16, true);
    if (pt !== 1 && pt !== 2) return undefined;
    if (len[0] < 56) return undefined;
    return Number(dv.getBigUint64(48, true));
  }
  close(): void {
    if (!this.#ptr) return;
    const p = this.#ptr;
    this.#ptr = null;
    libbpf().bpf_link__destroy(p);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The agent's tc filter handle and priority unless `capture.tc_handle` says otherwise (src/bpf/tc.ts). */
export const DEFAULT_TC_HANDLE = 0x4a34;

export interface TcOptions {
  /** Interface name ("lo", "eth0") or index. */
  iface: string | number;
  direction?: "ingress" | "egress";
  /** Our own filter handle and priority: only this filter is ever replaced or removed. */
  handle?: number;
  priority?: number;
}

/** A classic TC (cls_bpf, direct-action) filter identified by handle/priority; close removes only it. */
export class TcLink implements AttachHandle {
  #hook: Uint8Array<ArrayBuffer> | null;
  constructor(
    hook: Uint8Array<ArrayBuffer>,
    readonly description: string,
    readonly handle: number,
    readonly priority: number,
  ) {
    this.#hook = hook;
  }
  get closed(): boolean {
    return this.#hook === null;
  }
  close(): void {
    if (!this.#hook) return;
    const hook = this.#hook;
    this.#hook = null;
    // The clsact qdisc is left in place: destroying it would also wipe other programs' filters.
    const rc = libbpf().bpf_tc_detach(hook, tcOpts(0, this.handle, this.priority, 0));
    if (rc < 0 && rc !== -2) throw new BpfError("bpf_tc_detach", -rc, this.description);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

export function tcHook(ifindex: number, direction: "ingress" | "egress"): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, 24n, true);
  dv.setInt32(8, ifindex, true);
  dv.setUint32(12, direction === "ingress" ? 1 : 2, true); // BPF_TC_INGRESS / BPF_TC_EGRESS
  return b;
}

export function tcOpts(
  progFd: number,
  handle: number,
  priority: number,
  flags: number,
): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(32);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, 32n, true);
  dv.setInt32(8, progFd, true);
  dv.setUint32(12, flags, true);
  dv.setUint32(20, handle, true);
  dv.setUint32(24, priority, true);
  return b;
}

export function ifindex(iface: string | number): number {
  if (typeof iface === "number") return iface;
  const i = libc().if_nametoindex(cstr(iface));
  if (i === 0) throw new BpfError("if_nametoindex", errno() || 19, iface);
  return i;
}

export interface UprobeOptions {
  /** Path or bare soname (libbpf resolves "libapr-1.so.0"). */
  path: string;
  /** Function name, resolved by libbpf; or a file offset (see elf.ts). */
  funcName?: string;
  offset?: number;
  retprobe?: boolean;
  /** -1 (default): every process. */
  pid?: number;
}

export class BpfProgram {
  constructor(readonly obj: BpfObject, readonly ptr: Deno.PointerObject, readonly name: string) {}

  get sectionName(): string {
    return readCString(libbpf().bpf_program__section_name(this.ptr));
  }
  get autoload(): boolean {
    return libbpf().bpf_program__autoload(this.ptr);
  }
  set autoload(on: boolean) {
    check("bpf_program__set_autoload", libbpf().bpf_program__set_autoload(this.ptr, on), this.name);
  }
  get fd(): number {
    return libbpf().bpf_program__fd(this.ptr);
  }
  get type(): number {
    return libbpf().bpf_program__type(this.ptr);
  }

  #link(op: string, p: Deno.PointerValue, what: string, kind: string): Link {
    const link = new Link(checkPtr(op, p, `${this.name} → ${what}`), `${this.name} → ${what}`, kind);
    this.obj.track(link);
    return link;
  }

  /**
   * Runs the loaded program `repeat` times on `data` in the kernel (BPF_PROG_TEST_RUN: for tc programs an
   * Ethernet frame, seen as at tc ingress). Returns its return value and the mean time of one run.
   */
  testRun(data: Uint8Array<ArrayBuffer>, repeat = 1): { retval: number; nsPerRun: number } {
    const run = libbpf().bpf_prog_test_run_opts;
    if (!run) throw new BpfError("bpf_prog_test_run_opts", 95, /* EOPNOTSUPP */ "libbpf older than 0.7");
    // struct bpf_test_run_opts (libbpf/bpf.h): sz, data_in, data_out, data_size_in, data_size_out, ctx_in,
    // ctx_out, ctx_size_in, ctx_size_out, retval, repeat, duration, flags, cpu, batch_size.
    const o = new ArrayBuffer(80), dv = new DataView(o);
    dv.setBigUint64(0, 80n, true);
    dv.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(data))), true);
    dv.setUint32(24, data.length, true);
    dv.setInt32(60, repeat, true);
    check("bpf_prog_test_run_opts", run(this.fd, new Uint8Array(o)), this.name);
    return { retval: dv.getUint32(56, true), nsPerRun: dv.getUint32(64, true) };
  }

  /** Attach as declared by the SEC() name (tracepoint/, tp_btf/, fexit/, kretsyscall/…). */
  attach(): Link {
    return this.#link(
      "bpf_program__attach",
      libbpf().bpf_program__attach(this.ptr),
      this.sectionName,
      "auto",
    );
  }
  attachTracepoint(category: string, name: string): Link {
    const p = libbpf().bpf_program__attach_tracepoint(this.ptr, cstr(category), cstr(name));
    return this.#link("bpf_program__attach_tracepoint", p, `tracepoint ${category}/${name}`, "tracepoint");
  }
  attachRawTracepoint(name: string): Link {
    const p = libbpf().bpf_program__attach_raw_tracepoint(this.ptr, cstr(name));
    return this.#link("bpf_program__attach_raw_tracepoint", p, `raw_tp ${name}`, "raw_tp");
  }
  /** fentry/fexit/tp_btf: the target comes from the section name. */
  attachTrace(): Link {
    const p = libbpf().bpf_program__attach_trace(this.ptr);
    return this.#link("bpf_program__attach_trace", p, this.sectionName, "trace");
  }
  /** Syscall kprobe with libbpf's wrapper naming (__x64_sys_… etc.). */
  attachKsyscall(syscall: string, retprobe: boolean): Link {
    const l = libbpf();
    if (!l.bpf_program__attach_ksyscall) {
      throw new BpfError("bpf_program__attach_ksyscall", 95, "libbpf < 1.0");
    }
    const opts = new Uint8Array(24);
    const dv = new DataView(opts.buffer);
    dv.setBigUint64(0, 24n, true);
    opts[16] = retprobe ? 1 : 0;
    const p = l.bpf_program__attach_ksyscall(this.ptr, cstr(syscall), opts);
    return this.#link(
      "bpf_program__attach_ksyscall",
      p,
      `${retprobe ? "kretsyscall" : "ksyscall"} ${syscall}`,
      retprobe ? "kretprobe" : "kprobe",
    );
  }
  attachKprobe(func: string, retprobe: boolean): Link {
    const p = libbpf().bpf_program__attach_kprobe(this.ptr, retprobe, cstr(func));
    const kind = retprobe ? "kretprobe" : "kprobe";
    return this.#link("bpf_program__attach_kprobe", p, `${kind} ${func}`, kind);
  }
  attachUprobe(o: UprobeOptions): Link {
    // struct bpf_uprobe_opts (libbpf 1.1, 40 bytes): sz@0, ref_ctr_offset@8, bpf_cookie@16, retprobe@24,
    // func_name@32. The name buffer stays referenced until the call returns (libbpf copies what it keeps).
    const opts = new Uint8Array(40);
    const dv = new DataView(opts.buffer);
    dv.setBigUint64(0, 40n, true);
    opts[24] = o.retprobe ? 1 : 0;
    const fname = o.funcName ? cstr(o.funcName) : null;
    if (fname) {
      dv.setBigUint64(32, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(fname))), true);
    }
    const path = cstr(o.path);
    const p = libbpf().bpf_program__attach_uprobe_opts(
      this.ptr,
      o.pid ?? -1,
      path,
      BigInt(o.offset ?? 0),
      opts,
    );
    const what = `${o.retprobe ? "uretprobe" : "uprobe"} ${o.path}:${
      o.funcName ?? "0x" + (o.offset ?? 0).toString(16)
    }`;
    const link = this.#link("bpf_program__attach_uprobe_opts", p, what, o.retprobe ? "uretprobe" : "uprobe");
    void fname;
    return link;
  }
  /**
   * Classic TC filter (direct-action) with our own handle/priority. An existing filter with the same
   * handle/priority (a previous run killed with SIGKILL) is replaced, never another program's.
   */
  attachTc(o: TcOptions): TcLink {
    const l = libbpf();
    const dir = o.direction ?? "ingress";
    const idx = ifindex(o.iface);
    const handle = o.handle ?? DEFAULT_TC_HANDLE;
    const priority = o.priority ?? DEFAULT_TC_HANDLE & 0xffff;
    const hook = tcHook(idx, dir);
    const rc = l.bpf_tc_hook_create(hook);
    if (rc < 0 && rc !== -17 /* EEXIST: clsact already there */) {
      throw new BpfError("bpf_tc_hook_create", -rc, `${o.iface} ${dir}`);
    }
    const fd = this.fd;
    if (fd < 0) throw new BpfError("bpf_tc_attach", 9, `${this.name} is not loaded`);
    check(
      "bpf_tc_attach",
      l.bpf_tc_attach(hook, tcOpts(fd, handle, priority, 1 /* BPF_TC_F_REPLACE */)),
      this.name,
    );
    const link = new TcLink(
      hook,
      `${this.name} → tc ${dir} ${o.iface} handle ${handle} prio ${priority}`,
      handle,
      priority,
    );
    this.obj.track(link);
    return link;
  }
}

export class BpfMap {
  constructor(readonly ptr: Deno.PointerObject, readonly name: string) {}
  get fd(): number {
    return libbpf().bpf_map__fd(this.ptr);
  }
  get type(): number {
    return libbpf().bpf_map__type(this.ptr);
  }
  get maxEntries(): number {
    return libbpf().bpf_map__max_entries(this.ptr);
  }
  get keySize(): number {
    return libbpf().bpf_map__key_size(this.ptr);
  }
  get valueSize(): number {
    return libbpf().bpf_map__value_size(this.ptr);
  }
  /** Before load only. For ring buffers: bytes, a power of two multiple of the page size. */
  setMaxEntries(n: number): void {
    check("bpf_map__set_max_entries", libbpf().bpf_map__set_max_entries(this.ptr, n), this.name);
  }
  /** Before load: false leaves the map out (ring buffers on kernels without them). */
  setAutocreate(on: boolean): void {
    const f = libbpf().bpf_map__set_autocreate;
    if (!f) throw new BpfError("bpf_map__set_autocreate", 95, "libbpf < 1.0");
    check("bpf_map__set_autocreate", f(this.ptr, on), this.name);
  }
  get perCpu(): boolean {
    const t = this.type;
    return t === MapType.PERCPU_ARRAY || t === MapType.PERCPU_HASH || t === MapType.LRU_PERCPU_HASH;
  }
  /** Bytes of one lookup value: per-CPU maps hold one 8-byte-aligned slot per possible CPU. */
  get lookupSize(): number {
    return this.perCpu ? Math.ceil(this.valueSize / 8) * 8 * possibleCpus() : this.valueSize;
  }
  update(key: Uint8Array<ArrayBuffer>, value: Uint8Array<ArrayBuffer>, flags = 0): void {
    check("bpf_map_update_elem", libbpf().bpf_map_update_elem(this.fd, key, value, BigInt(flags)), this.name);
  }
  /** The value, or undefined when the key is absent. */
  lookup(key: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> | undefined {
    const v = new Uint8Array(this.lookupSize);
    const rc = libbpf().bpf_map_lookup_elem(this.fd, key, v);
    if (rc === -2) return undefined;
    check("bpf_map_lookup_elem", rc, this.name);
    return v;
  }
  /** True when the key was there. */
  delete(key: Uint8Array<ArrayBuffer>): boolean {
    const rc = libbpf().bpf_map_delete_elem(this.fd, key);
    if (rc === -2) return false;
    check("bpf_map_delete_elem", rc, this.name);
    return true;
  }
  *keys(): Generator<Uint8Array<ArrayBuffer>> {
    let prev: Uint8Array<ArrayBuffer> | null = null;
    for (;;) {
      const next = new Uint8Array(this.keySize);
      const rc = libbpf().bpf_map_get_next_key(this.fd, prev as Uint8Array<ArrayBuffer>, next);
      if (rc === -2) return;
      check("bpf_map_get_next_key", rc, this.name);
      yield next;
      prev = next;
    }
  }
  /** Per-CPU slots of a u64 value summed (counters); a plain u64 value as is; 0n when absent. */
  sumU64(key: Uint8Array<ArrayBuffer>, fieldOffset = 0): bigint {
    const v = this.lookup(key);
    if (!v) return 0n;
    const dv = new DataView(v.buffer);
    if (!this.perCpu) return dv.getBigUint64(fieldOffset, true);
    const slot = Math.ceil(this.valueSize / 8) * 8;
    let sum = 0n;
    for (let off = 0; off + slot <= v.length; off += slot) sum += dv.getBigUint64(off + fieldOffset, true);
    return sum;
  }
}

let cpus = 0;
export function possibleCpus(): number {
  if (!cpus) cpus = check("libbpf_num_possible_cpus", libbpf().libbpf_num_possible_cpus());
  return cpus;
}

/** A u32 map key in host byte order. */
export function u32Key(n: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new Uint32Array([n]).buffer);
}

/** One variable of a global-data section (.rodata, .bss…) as the object's BTF describes it. */
export interface GlobalVar {
  name: string;
  offset: number;
  size: number;
}

export type GlobalValue = number | bigint | boolean | Uint8Array;

export class BpfObject implements Disposable {
  #ptr: Deno.PointerObject | null;
  #handles = new Set<AttachHandle>();
  #loaded = false;
  // libbpf keeps a pointer to the object bytes until close.
  #bytes: Uint8Array<ArrayBuffer>;

  private constructor(ptr: Deno.PointerObject, bytes: Uint8Array<ArrayBuffer>) {
    this.#ptr = ptr;
    this.#bytes = bytes;
  }

  /** Opens an ELF BPF object held in memory (nothing is loaded into the kernel yet). */
  static openMem(bytes: Uint8Array, name = "ja4ebpf"): BpfObject {
    const copy = new Uint8Array(bytes);
    // struct bpf_object_open_opts: sz@0, object_name@8 (char*); the rest zero. 128 bytes covers 1.x.
    const opts = new Uint8Array(128);
    const dv = new DataView(opts.buffer);
    const nameBuf = cstr(name);
    dv.setBigUint64(0, 128n, true);
    dv.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(nameBuf))), true);
    // libbpf checks that bytes past the fields it knows are zero, so a larger sz is accepted.
    let p = libbpf().bpf_object__open_mem(copy, BigInt(copy.length), Deno.UnsafePointer.of(opts));
    if (p === null && errno() === 95) {
      // An older libbpf that refuses a larger opts struct: open without options.
      p = libbpf().bpf_object__open_mem(copy, BigInt(copy.length), null);
    }
    void nameBuf;
    return new BpfObject(checkPtr("bpf_object__open_mem", p), copy);
  }

  get ptr(): Deno.PointerObject {
    if (!this.#ptr) throw new BpfError("bpf_object", 9, "object closed");
    return this.#ptr;
  }
  get loaded(): boolean {
    return this.#loaded;
  }
  get closed(): boolean {
    return this.#ptr === null;
  }
  get size(): number {
    return this.#bytes.length;
  }

  programs(): BpfProgram[] {
    const out: BpfProgram[] = [];
    let p: Deno.PointerValue = null;
    for (;;) {
      p = libbpf().bpf_object__next_program(this.ptr, p);
      if (!p) return out;
      out.push(new BpfProgram(this, p, readCString(libbpf().bpf_program__name(p))));
    }
  }
  hasProgram(name: string): boolean {
    return libbpf().bpf_object__find_program_by_name(this.ptr, cstr(name)) !== null;
  }
  program(name: string): BpfProgram {
    const p = libbpf().bpf_object__find_program_by_name(this.ptr, cstr(name));
    return new BpfProgram(this, checkPtr("bpf_object__find_program_by_name", p, name), name);
  }
  setAutoload(name: string, on: boolean): void {
    this.program(name).autoload = on;
  }
  maps(): BpfMap[] {
    const out: BpfMap[] = [];
    let p: Deno.PointerValue = null;
    for (;;) {
      p = libbpf().bpf_object__next_map(this.ptr, p);
      if (!p) return out;
      out.push(new BpfMap(p, readCString(libbpf().bpf_map__name(p))));
    }
  }
  hasMap(name: string): boolean {
    return libbpf().bpf_object__find_map_by_name(this.ptr, cstr(name)) !== null;
  }
  map(name: string): BpfMap {
    const p = libbpf().bpf_object__find_map_by_name(this.ptr, cstr(name));
    return new BpfMap(checkPtr("bpf_object__find_map_by_name", p, name), name);
  }
  /** Sets a ring buffer's size in bytes (power of two, page multiple) before load. */
  setRingSize(mapName: string, bytes: number): void {
    if (bytes < 4096 || (bytes & (bytes - 1)) !== 0) {
      throw new BpfError("setRingSize", 22, `${mapName}: ${bytes} is not a power of two ≥ 4096`);
    }
    this.map(mapName).setMaxEntries(bytes);
  }

  /** The variables of a global-data section, read from the object's BTF (DATASEC → VARs). */
  globals(section = ".rodata"): GlobalVar[] {
    const l = libbpf();
    const btf = l.bpf_object__btf(this.ptr);
    if (!btf) throw new BpfError("bpf_object__btf", 2, "object has no BTF");
    const id = l.btf__find_by_name_kind(btf, cstr(section), 15 /* BTF_KIND_DATASEC */);
    if (id < 0) return [];
    const t = checkPtr("btf__type_by_id", l.btf__type_by_id(btf, id));
    const v = new Deno.UnsafePointerView(t);
    const vlen = v.getUint32(4) & 0xffff;
    const out: GlobalVar[] = [];
    for (let i = 0; i < vlen; i++) {
      // struct btf_type is 12 bytes; then btf_var_secinfo {type, offset, size} per variable.
      const typeId = v.getUint32(12 + i * 12);
      const offset = v.getUint32(12 + i * 12 + 4);
      const size = v.getUint32(12 + i * 12 + 8);
      const vt = l.btf__type_by_id(btf, typeId);
      const name = vt
        ? readCString(l.btf__name_by_offset(btf, new Deno.UnsafePointerView(vt).getUint32(0)))
        : "";
      out.push({ name, offset, size });
    }
    return out;
  }

  /**
   * Sets global variables (`const volatile` config in .rodata) before load, by name, using the offsets
   * from the object's BTF. Unknown names and oversized values are errors, never silently ignored.
   */
  setGlobals(values: Record<string, GlobalValue>, section = ".rodata"): void {
    if (this.#loaded) throw new BpfError("setGlobals", 16, "object already loaded");
    const vars = new Map(this.globals(section).map((g) => [g.name, g]));
    const map = this.maps().find((m) => m.name.endsWith(section));
    if (!map) throw new BpfError("setGlobals", 2, `no ${section} map`);
    const l = libbpf();
    const psize = new BigUint64Array(1);
    const cur = l.bpf_map__initial_value(map.ptr, new Uint8Array(psize.buffer));
    const size = Number(psize[0]);
    if (!cur || size === 0) throw new BpfError("bpf_map__initial_value", errno() || 2, map.name);
    const data = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(cur, size).slice(0));
    const dv = new DataView(data.buffer);
    for (const [name, value] of Object.entries(values)) {
      const g = vars.get(name);
      if (!g) throw new BpfError("setGlobals", 2, `no variable ${name} in ${section}`);
      if (value instanceof Uint8Array) {
        if (value.length > g.size) {
          throw new BpfError("setGlobals", 7, `${name}: ${value.length} > ${g.size}`);
        }
        data.fill(0, g.offset, g.offset + g.size);
        data.set(value, g.offset);
        continue;
      }
      const n = typeof value === "boolean" ? (value ? 1n : 0n) : BigInt(value);
      switch (g.size) {
        case 1:
          dv.setUint8(g.offset, Number(BigInt.asUintN(8, n)));
          break;
        case 2:
          dv.setUint16(g.offset, Number(BigInt.asUintN(16, n)), true);
          break;
        case 4:
          dv.setUint32(g.offset, Number(BigInt.asUintN(32, n)), true);
          break;
        case 8:
          dv.setBigUint64(g.offset, BigInt.asUintN(64, n), true);
          break;
        default:
          throw new BpfError("setGlobals", 22, `${name}: size ${g.size} needs a Uint8Array`);
      }
    }
    check("bpf_map__set_initial_value", l.bpf_map__set_initial_value(map.ptr, data, BigInt(size)), map.name);
  }

  /** Loads the enabled programs and creates the maps. A refusal leaves the object unusable: close it. */
  load(): void {
    check("bpf_object__load", libbpf().bpf_object__load(this.ptr));
    this.#loaded = true;
  }

  /** Called by attach methods: the object closes whatever is still attached. */
  track(h: AttachHandle): void {
    this.#handles.add(h);
  }

  /** Detaches everything still attached, then frees the object (programs and maps go with their fds). */
  close(): void {
    if (!this.#ptr) return;
    for (const h of this.#handles) {
      try {
        h.close();
      } catch {
        // Detach failures are reported by the handle's own close; the object still goes.
      }
    }
    this.#handles.clear();
    const p = this.#ptr;
    this.#ptr = null;
    libbpf().bpf_object__close(p);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** True when the kernel creates BPF ring buffers (feature probe, not a version check). */
export function probeRingbuf(): boolean {
  return libbpf().libbpf_probe_bpf_map_type(MapType.RINGBUF, null) === 1;
}
