/**
 * The attach plan: for each hook, the capture method this kernel really accepts. Each candidate is
 * probed by loading the object with only its programs enabled and attaching them (never by comparing
 * kernel versions); the first that works in order wins, or the method forced by the configuration.
 * Every refusal is kept with its errno text for --validate. The final load enables only chosen programs.
 */
import {
  BpfError,
  BpfFunc,
  libbpf,
  libbpfWarningsSince,
  libbpfWarnMark,
  MapType,
  pageSize,
  ProgType,
  quietLibbpf,
} from "./ffi.ts";
import { type AttachHandle, BpfObject, type GlobalValue, probeRingbuf } from "./object.ts";
import { type LibaprInfo, probeLibapr, SYSCALL_NUMBERS } from "./probes.ts";
import { attachKretprobeEvent, kretprobeMaxactive } from "./kprobe_events.ts";
import type { Config } from "../config/config.ts";

export type HookName = "nginx" | "apache" | "packets" | "close" | "follow" | "listen";

/** How one program attaches. */
export type AttachSpec =
  | { kind: "auto" }
  | { kind: "uprobe"; library: "libapr"; symbol: string; retprobe: boolean }
  /** A uprobe at a known file offset of a given library (libssl for --validate). */
  | { kind: "uprobe_at"; path: string; offset: number; retprobe: boolean }
  | { kind: "tc"; direction: "ingress" | "egress" }
  /** A syscall's return through a tracefs kprobe event with our maxactive (kprobe_events.ts). */
  | { kind: "kretprobe_event"; syscall: string };

export interface ProgramAttach {
  program: string;
  attach: AttachSpec;
}

export interface MethodSpec {
  method: string;
  /** Alternative program sets (e.g. raw_tp, then tp_btf): the first that loads and attaches wins. */
  variants: ProgramAttach[][];
}

export interface HookSpec {
  hook: HookName;
  /** In `auto` order. */
  methods: MethodSpec[];
}

const auto = (...programs: string[]): ProgramAttach[] =>
  programs.map((program) => ({ program, attach: { kind: "auto" } }));

/**
 * The real object's programs (docs/bpf.md). Default nginx order: tracepoint (stable ABI, fires only for
 * recvfrom), raw_tp (fires on every syscall: costs all processes), fexit (cheapest, but trampolines are
 * often locked down), kretprobe (misses returns while other processes hold instances).
 */
export const DEFAULT_HOOKS: HookSpec[] = [
  {
    hook: "nginx",
    methods: [
      {
        method: "tracepoint",
        // The exit alone where the kernel gives a task's saved registers (5.15+): half the program runs.
        variants: [auto("tp_exit_recvfrom_regs"), auto("tp_sys_enter_recvfrom", "tp_sys_exit_recvfrom")],
      },
      {
        method: "raw_tp",
        variants: [auto("raw_tp_sys_enter", "raw_tp_sys_exit"), auto("tp_btf_sys_enter", "tp_btf_sys_exit")],
      },
      { method: "fexit", variants: [auto("fexit_recvfrom")] },
      {
        method: "kretprobe",
        // The entry is libbpf's ksyscall kprobe (an entry probe holds no instance); the return needs a
        // maxactive larger than the kernel's default, which only a tracefs event takes.
        variants: [[
          { program: "kprobe_recvfrom", attach: { kind: "auto" } },
          { program: "kretprobe_recvfrom", attach: { kind: "kretprobe_event", syscall: "recvfrom" } },
        ]],
      },
    ],
  },
  {
    hook: "apache",
    methods: [
      {
        method: "uprobe",
        variants: [[
          {
            program: "uprobe_apr_socket_recv_entry",
            attach: { kind: "uprobe", library: "libapr", symbol: "apr_socket_recv", retprobe: false },
          },
          {
            program: "uretprobe_apr_socket_recv",
            attach: { kind: "uprobe", library: "libapr", symbol: "apr_socket_recv", retprobe: true },
          },
        ]],
      },
      {
        method: "read_tracepoint",
        variants: [
          auto("tp_exit_read_regs", "tp_enter_readv", "tp_exit_readv"),
          auto("tp_enter_read", "tp_exit_read", "tp_enter_readv", "tp_exit_readv"),
        ],
      },
    ],
  },
  {
    hook: "packets",
    methods: [{
      method: "tc",
      variants: [[{ program: "tc_ingress", attach: { kind: "tc", direction: "ingress" } }]],
    }],
  },
  { hook: "close", methods: [{ method: "tracepoint", variants: [auto("tp_enter_close")] }] },
  /**
   * A traced server's listen() adds its port to listen_ports in the kernel, so tc reports the first
   * connections of a server started after the agent (their JA4T, JA4). Unavailable: the /proc scans alone.
   */
  { hook: "listen", methods: [{ method: "tracepoint", variants: [auto("tp_enter_listen")] }] },
  /**
   * traced_pids kept current in the kernel (fork of a traced process, exec of a server binary, exit), so new
   * workers are traced before their first read. Unavailable: the agent's /proc scans alone fill the map.
   */
  {
    hook: "follow",
    methods: [
      { method: "tp_btf", variants: [auto("follow_fork_btf", "follow_exec_btf", "follow_exit_btf")] },
      { method: "tracepoint", variants: [auto("follow_fork_tp", "follow_exec_tp", "follow_exit_tp")] },
    ],
  },
];

/**
 * HTTPS plaintext: [function, entry program, return program] (entry before return: a return probe without its
 * entry would see no stash). SSL_read_ex is absent before 1.1.1. Attached at run time where
 * src/capture/tls_sites.ts says: the server's own file first, libssl as the fallback.
 */
export const SSL_UPROBES: readonly (readonly [string, string, string])[] = [
  ["SSL_do_handshake", "up_ssl_hshake", "uret_ssl_hshake"],
  ["SSL_read", "up_ssl_read", "uret_ssl_read"],
  ["SSL_read_ex", "up_ssl_read_ex", "uret_ssl_read_ex"],
];

/** tc filter identity of the probes (the agent's default is 0x4a34/0x4a34, see object.ts). */
export const PROBE_TC_HANDLE = 0x4a35;
export const PROBE_TC_PRIORITY = 0x4a35;

export interface PlanConfig {
  /** "auto", a method name, or "off". Missing hooks default to "auto". */
  methods?: Partial<Record<HookName, string>>;
  /** Interfaces for tc; the probe uses the first (default "lo"). */
  tcInterfaces?: string[];
  /** Our own tc filter handle/priority. */
  tcHandle?: number;
  tcPriority?: number;
  libapr?: LibaprInfo;
  /** Probe every method even after one worked (--validate: name every refusal). */
  exhaustive?: boolean;
  /** Whether the kernel has ring buffers: if not, ring buffer maps are not created. */
  ringbuf?: boolean;
  /** kretprobe maxactive (default: $JA4EBPF_KRETPROBE_MAXACTIVE, else 4096, the kernel's ceiling). */
  kretprobeMaxactive?: number;
  /** `has_task_btf` for every load (probe and final); default: probeTaskBtf(). */
  taskBtf?: boolean;
  hooks?: HookSpec[];
  /** Why a hook is asked for another method than its configured one (kept on the HookPlan). */
  why?: Partial<Record<HookName, string>>;
}

export interface MethodAttempt {
  method: string;
  ok: boolean;
  /** Where it failed: the object lacks the programs, a precondition, the load, or the attach. */
  stage?: "object" | "precondition" | "load" | "attach";
  /** "EPERM: Operation not permitted" */
  error?: string;
  errno?: number;
  /** A load refused by the verifier: the program and the last lines of its log (why). */
  verifier?: string;
  /** The program set that was tried (the winning one when ok). */
  programs: string[];
}

export interface HookPlan {
  hook: HookName;
  requested: string;
  /** The method that will be used, or null. */
  method: string | null;
  /** Programs (with how they attach) that will be enabled for this hook. */
  programs: ProgramAttach[];
  attempts: MethodAttempt[];
  /** In words, when method is null. */
  reason?: string;
  /** Why `requested` is not the configured method (e.g. "uprobes.enabled is false"). */
  why?: string;
}

export interface AttachPlan {
  hooks: HookPlan[];
  ringbuf: boolean;
  /** `has_task_btf` the plan was probed with (the final load uses the same). */
  taskBtf: boolean;
  /** Programs of the object left out of the final load. */
  disabled: string[];
  /** What the attach steps need again at the final load (library offset, tc settings). */
  context: Pick<PlanConfig, "libapr" | "tcInterfaces" | "tcHandle" | "tcPriority" | "kretprobeMaxactive">;
}

const helperProbed = new Map<number, boolean>();
/** Whether tracepoint programs may call BPF helper `id` on this kernel (probed once by loading one). */
function probeHelper(id: number): boolean {
  let ok = helperProbed.get(id);
  if (ok === undefined) {
    const probe = libbpf().libbpf_probe_bpf_helper;
    ok = probe ? quietLibbpf(() => probe(ProgType.TRACEPOINT, id, null)) === 1 : false;
    helperProbed.set(id, ok);
  }
  return ok;
}

/**
 * Whether the kernel offers bpf_get_current_task_btf() (helper 158, 5.11+; not in RHEL 8's 4.18) to
 * tracepoint programs. A libbpf without the probe (< 0.8) or a failed probe answers false: the
 * bpf_get_current_task() path gives the same events on every kernel.
 */
export function probeTaskBtf(): boolean {
  return probeHelper(BpfFunc.GET_CURRENT_TASK_BTF);
}

/**
 * Whether tracepoint programs may call bpf_task_pt_regs() (helper 175, 5.15+): then a syscall's exit
 * program reads the call's arguments itself and needs no entry program (`*_regs` programs).
 */
export function probeTaskPtRegs(): boolean {
  return probeHelper(BpfFunc.TASK_PT_REGS);
}

/** The read() programs that teach the HTTPS probes their fd and carry nginx's raw TLS stream. */
export function readPrograms(ptRegs = probeTaskPtRegs()): string[] {
  return ptRegs ? ["tp_exit_read_regs"] : ["tp_enter_read", "tp_exit_read"];
}

function errText(e: unknown): { error: string; errno?: number } {
  if (e instanceof BpfError) return { error: `${e.errnoText} (${e.op})`, errno: e.errno };
  return { error: e instanceof Error ? e.message : String(e) };
}

function attachOne(o: BpfObject, pa: ProgramAttach, cfg: PlanConfig, ifaces: string[]): AttachHandle[] {
  const prog = o.program(pa.program);
  const a = pa.attach;
  switch (a.kind) {
    case "auto":
      return [prog.attach()];
    case "uprobe": {
      const lib = cfg.libapr;
      if (!lib?.path || lib.offset === undefined) throw new Error(lib?.error ?? "libapr not located");
      return [prog.attachUprobe({ path: lib.path, offset: lib.offset, retprobe: a.retprobe })];
    }
    case "uprobe_at":
      return [prog.attachUprobe({ path: a.path, offset: a.offset, retprobe: a.retprobe })];
    case "tc":
      return ifaces.map((iface) =>
        prog.attachTc({ iface, direction: a.direction, handle: cfg.tcHandle, priority: cfg.tcPriority })
      );
    case "kretprobe_event":
      return [
        attachKretprobeEvent(prog, {
          syscall: a.syscall,
          maxactive: kretprobeMaxactive(cfg.kretprobeMaxactive),
        }),
      ];
  }
}

function preconditions(variant: ProgramAttach[], cfg: PlanConfig): string | undefined {
  for (const pa of variant) {
    if (pa.attach.kind === "uprobe" && (!cfg.libapr?.path || cfg.libapr.offset === undefined)) {
      return cfg.libapr?.error ?? "libapr-1.so.0 not located";
    }
  }
  return undefined;
}

/**
 * Opens the object with only `enabled` programs loaded; ring buffers small (probe) or as configured. Probe
 * loads and the final load get the same kernel switches (`use_ringbuf` from cfg.ringbuf, `has_task_btf`
 * from cfg.taskBtf or the probe), so a probe passes exactly when the final load will; `globals` override.
 */
function openWith(
  bytes: Uint8Array,
  enabled: Set<string>,
  cfg: PlanConfig,
  probe: boolean,
  globals?: Record<string, GlobalValue>,
  ringBytes?: number,
): BpfObject {
  const o = BpfObject.openMem(bytes);
  try {
    for (const p of o.programs()) p.autoload = enabled.has(p.name);
    for (const m of o.maps()) {
      if (m.type !== MapType.RINGBUF) continue;
      if (cfg.ringbuf === false) m.setAutocreate(false);
      else if (probe) m.setMaxEntries(Math.max(pageSize(), 4096));
      else if (ringBytes) m.setMaxEntries(ringBytes);
    }
    const declared = objectGlobals(o);
    const values: Record<string, GlobalValue> = {};
    // Ring buffer off: the branch that names `events` must be dead, or the load refers to an uncreated map.
    if (declared.has("use_ringbuf")) values.use_ringbuf = cfg.ringbuf !== false;
    if (declared.has("has_task_btf")) values.has_task_btf = cfg.taskBtf ?? probeTaskBtf();
    // The object's defaults are x86-64's: on arm64 they name other syscalls and raw_tp would see nothing.
    const nr = SYSCALL_NUMBERS[Deno.build.arch];
    if (nr && declared.has("nr_recvfrom")) values.nr_recvfrom = nr.recvfrom;
    if (nr && declared.has("nr_read")) values.nr_read = nr.read;
    Object.assign(values, globals);
    if (Object.keys(values).length) o.setGlobals(values);
  } catch (e) {
    o.close();
    throw e;
  }
  return o;
}

/**
 * "prog 'tc_ingress': …last lines of its verifier log" from libbpf's warnings of one failed load (libbpf
 * prints the whole log as one message between BEGIN/END PROG LOAD LOG), or undefined without a log.
 */
export function verifierTail(warnings: string[], lines = 4): string | undefined {
  for (const w of warnings) {
    const m = /prog '([^']+)': -- BEGIN PROG LOAD LOG --\n([\s\S]*?)(?:-- END PROG LOAD LOG --|$)/.exec(w);
    if (!m) continue;
    const body = m[2].split("\n").map((l) => l.trim()).filter((l) => l && !/^processed \d+ insns/.test(l));
    if (body.length) return `prog '${m[1]}': ${body.slice(-lines).join(" | ")}`;
  }
  return undefined;
}

/** Names of the object's .rodata config variables (none when it has no BTF or no .rodata). */
function objectGlobals(o: BpfObject): Set<string> {
  try {
    return new Set(o.globals().map((g) => g.name));
  } catch {
    return new Set();
  }
}

/** Loads and attaches one program set in a throw-away object; everything is closed before returning. */
export function probeVariant(
  bytes: Uint8Array,
  variant: ProgramAttach[],
  cfg: PlanConfig,
): Omit<MethodAttempt, "method"> {
  const programs = variant.map((p) => p.program);
  const pre = preconditions(variant, cfg);
  if (pre) return { ok: false, stage: "precondition", error: pre, programs };
  const o = BpfObject.openMem(bytes);
  try {
    const missing = programs.filter((p) => !o.hasProgram(p));
    if (missing.length) {
      return { ok: false, stage: "object", error: `not in the BPF object: ${missing.join(", ")}`, programs };
    }
  } finally {
    o.close();
  }
  let obj: BpfObject;
  try {
    obj = openWith(bytes, new Set(programs), cfg, true);
  } catch (e) {
    return { ok: false, stage: "load", ...errText(e), programs };
  }
  try {
    const mark = libbpfWarnMark();
    try {
      obj.load();
    } catch (e) {
      const verifier = verifierTail(libbpfWarningsSince(mark));
      return { ok: false, stage: "load", ...errText(e), ...(verifier ? { verifier } : {}), programs };
    }
    try {
      // Probe tc filters use their own handle/priority: a probe (--validate) must never replace, then
      // remove, the filter of an agent already running on this host.
      const probeCfg = { ...cfg, tcHandle: PROBE_TC_HANDLE, tcPriority: PROBE_TC_PRIORITY };
      for (const pa of variant) attachOne(obj, pa, probeCfg, (cfg.tcInterfaces ?? ["lo"]).slice(0, 1));
    } catch (e) {
      return { ok: false, stage: "attach", ...errText(e), programs };
    }
    return { ok: true, programs };
  } finally {
    obj.close();
  }
}

/** Probes the hooks' methods on this kernel and picks one per hook. */
export function makePlan(bytes: Uint8Array, cfg: PlanConfig = {}): AttachPlan {
  return quietLibbpf(() => makePlanLoud(bytes, cfg));
}

function makePlanLoud(bytes: Uint8Array, cfg: PlanConfig): AttachPlan {
  cfg = { ...cfg, taskBtf: cfg.taskBtf ?? probeTaskBtf() };
  const hooks: HookPlan[] = [];
  const all = new Set<string>();
  {
    using o = BpfObject.openMem(bytes);
    for (const p of o.programs()) all.add(p.name);
  }
  for (const spec of cfg.hooks ?? DEFAULT_HOOKS) {
    const requested = cfg.methods?.[spec.hook] ?? "auto";
    const hp: HookPlan = { hook: spec.hook, requested, method: null, programs: [], attempts: [] };
    const why = cfg.why?.[spec.hook];
    if (why) hp.why = why;
    hooks.push(hp);
    if (requested === "off") {
      hp.reason = "disabled by configuration";
      continue;
    }
    const candidates = requested === "auto"
      ? spec.methods
      : spec.methods.filter((m) => m.method === requested);
    if (!candidates.length) {
      hp.reason = `unknown method '${requested}' for ${spec.hook} (one of: auto, off, ${
        spec.methods.map((m) => m.method).join(", ")
      })`;
      continue;
    }
    for (const m of candidates) {
      if (hp.method && !cfg.exhaustive) break;
      let attempt: MethodAttempt | undefined;
      for (const variant of m.variants) {
        attempt = { method: m.method, ...probeVariant(bytes, variant, cfg) };
        if (attempt.ok) {
          if (!hp.method) {
            hp.method = m.method;
            hp.programs = variant;
          }
          break;
        }
      }
      if (attempt) hp.attempts.push(attempt);
    }
    if (!hp.method) {
      hp.reason = hp.attempts.map((a) => `${a.method}: ${a.error}`).join("; ");
    }
  }
  const chosen = new Set(hooks.flatMap((h) => h.programs.map((p) => p.program)));
  return {
    hooks,
    ringbuf: cfg.ringbuf !== false,
    taskBtf: cfg.taskBtf!,
    disabled: [...all].filter((p) => !chosen.has(p)).sort(),
    context: {
      libapr: cfg.libapr,
      tcInterfaces: cfg.tcInterfaces,
      tcHandle: cfg.tcHandle,
      tcPriority: cfg.tcPriority,
      kretprobeMaxactive: cfg.kretprobeMaxactive,
    },
  };
}

export interface PlannedObject extends Disposable {
  obj: BpfObject;
  links: AttachHandle[];
  /** The same links by program (the agent re-attaches libapr uprobes when the library is replaced). */
  programLinks: Map<string, AttachHandle[]>;
  close(): void;
}

/**
 * The final load: only the plan's programs enabled, config globals set (`self_tgid`, `use_ringbuf` and
 * `has_task_btf` are filled in from the plan when the object declares them), then every chosen program
 * attached.
 */
export function openPlanned(
  bytes: Uint8Array,
  plan: AttachPlan,
  cfg: PlanConfig = {},
  opts: {
    globals?: Record<string, GlobalValue>;
    ringBytes?: number;
    /** Programs loaded too but attached later by the caller (uprobes on libraries found at run time). */
    loadOnly?: string[];
  } = {},
): PlannedObject {
  cfg = { ...plan.context, ...cfg };
  const chosen = plan.hooks.flatMap((h) => h.programs);
  const globals: Record<string, GlobalValue> = {};
  {
    using probe = BpfObject.openMem(bytes);
    const names = new Set(probe.globals().map((g) => g.name));
    if (names.has("self_tgid")) globals.self_tgid = Deno.pid;
  }
  Object.assign(globals, opts.globals);
  const obj = openWith(
    bytes,
    new Set([...chosen.map((p) => p.program), ...(opts.loadOnly ?? [])]),
    { ...cfg, ringbuf: plan.ringbuf, taskBtf: cfg.taskBtf ?? plan.taskBtf },
    false,
    globals,
    opts.ringBytes,
  );
  const links: AttachHandle[] = [];
  const programLinks = new Map<string, AttachHandle[]>();
  try {
    obj.load();
    for (const pa of chosen) {
      const l = attachOne(obj, pa, cfg, cfg.tcInterfaces ?? ["lo"]);
      links.push(...l);
      programLinks.set(pa.program, [...(programLinks.get(pa.program) ?? []), ...l]);
    }
  } catch (e) {
    obj.close();
    throw e;
  }
  return {
    obj,
    links,
    programLinks,
    close() {
      obj.close();
    },
    [Symbol.dispose]() {
      obj.close();
    },
  };
}

/** The configuration keys that decide the plan (a whole Config fits). */
export interface PlanSettings {
  uprobes: Pick<Config["uprobes"], "enabled" | "servers">;
  capture:
    & Pick<Config["capture"], "nginx" | "apache" | "ringbuf" | "kretprobe_maxactive" | "interfaces">
    & Partial<Pick<Config["capture"], "tc_handle">>;
}

/** What the plan needs from the host; planFromConfig probes what is not given. */
export interface PlanHost {
  /** Whether the kernel creates BPF ring buffers (asked only with capture.ringbuf auto). */
  ringbuf?: boolean;
  /** Where libapr's apr_socket_recv is (asked only when Apache may be uprobed). */
  libapr?: LibaprInfo;
  /** The capture interfaces, as captureInterfaces() lists them. */
  interfaces?: string[];
}

/** The channel: capture.ringbuf forces one; auto takes the ring buffer where the kernel has it. */
export function ringbufChosen(setting: Config["capture"]["ringbuf"], kernelRingbuf: () => boolean): boolean {
  return setting === "perfbuf" ? false : setting === "ringbuf" ? true : kernelRingbuf();
}

/** Apache's apr_socket_recv uprobes may be used (then libapr is located before planning). */
export function aprUprobesWanted(cfg: PlanSettings): boolean {
  return cfg.uprobes.enabled && cfg.uprobes.servers.includes("apache");
}

/**
 * The plan inputs of a configuration, with the host facts already known. Pure: `run` and `--validate` both
 * get here through planFromConfig, so --validate reports the methods `run` attaches.
 */
export function planInputs(
  cfg: PlanSettings,
  host: { ringbuf: boolean; libapr?: LibaprInfo; interfaces: string[] },
): PlanConfig {
  const servers = cfg.uprobes.servers;
  const why: Partial<Record<HookName, string>> = {};
  const method = (server: "nginx" | "apache", configured: string) => {
    if (!servers.includes(server)) {
      why[server] = `uprobes.servers does not list ${server}`;
      return "off";
    }
    // Without uprobes the only way to see Apache's reads is the read tracepoints.
    if (server === "apache" && configured === "auto" && !cfg.uprobes.enabled) {
      why[server] = "uprobes.enabled is false";
      return "read_tracepoint";
    }
    return configured;
  };
  const ifaces = host.interfaces;
  return {
    methods: { nginx: method("nginx", cfg.capture.nginx), apache: method("apache", cfg.capture.apache) },
    // The probe attaches to the first one: loopback is always there.
    tcInterfaces: ifaces.includes("lo") ? ["lo", ...ifaces.filter((i) => i !== "lo")] : ifaces,
    // The agent's own filter identity (src/bpf/tc.ts); undefined: the default.
    tcHandle: cfg.capture.tc_handle,
    tcPriority: cfg.capture.tc_handle,
    libapr: aprUprobesWanted(cfg) ? host.libapr : undefined,
    ringbuf: host.ringbuf,
    // The environment variable (tests) wins over the configured value.
    kretprobeMaxactive: Deno.env.get("JA4EBPF_KRETPROBE_MAXACTIVE")
      ? undefined
      : cfg.capture.kretprobe_maxactive,
    why,
  };
}

/**
 * The interfaces the packet hook attaches to: the configured ones, or with "auto" (or none) every interface
 * that is up, and loopback; sorted.
 */
export async function captureInterfaces(want: readonly string[]): Promise<string[]> {
  if (!(want.length === 0 || want.includes("auto"))) return [...want];
  const out: string[] = [];
  for (const e of Deno.readDirSync("/sys/class/net")) {
    try {
      const state = (await Deno.readTextFile(`/sys/class/net/${e.name}/operstate`)).trim();
      const flags = parseInt((await Deno.readTextFile(`/sys/class/net/${e.name}/flags`)).trim(), 16);
      if (e.name === "lo" || state === "up" || (flags & 1) === 1) out.push(e.name);
    } catch { /* interface vanished */ }
  }
  return out.sort();
}

/**
 * The one way a configuration becomes an attach plan, for `run` and `--validate` alike: host facts probed
 * (channel, libapr, interfaces) unless given, then every hook probed on this kernel. `exhaustive` (validate)
 * goes on probing after a method works; the method chosen is the same.
 */
export async function planFromConfig(
  bytes: Uint8Array,
  cfg: PlanSettings,
  opts: { exhaustive?: boolean; host?: PlanHost } = {},
): Promise<AttachPlan> {
  const host = opts.host ?? {};
  const inputs = planInputs(cfg, {
    ringbuf: ringbufChosen(cfg.capture.ringbuf, () => host.ringbuf ?? probeRingbuf()),
    libapr: aprUprobesWanted(cfg) ? host.libapr ?? await probeLibapr() : undefined,
    interfaces: host.interfaces ?? await captureInterfaces(cfg.capture.interfaces),
  });
  return makePlan(bytes, { ...inputs, exhaustive: opts.exhaustive });
}
