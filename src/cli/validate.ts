/**
 * `ja4ebpf --validate [--json]`: a dry run of the attach plan. The plan is built by the same function as
 * `run`'s (planFromConfig: servers, uprobes.enabled, channel, kretprobe_maxactive all applied), probing the
 * kernel for real (load and attach each method, then detach) and, unlike `run`, every method after the
 * chosen one too. Reports what `run` would attach and why the rest was refused.
 * Exit 0 when the agent can run here, 1 otherwise with the reason in words.
 */
import { parseFlags } from "./args.ts";
import { type Config, ConfigError, DEFAULT_CONFIG_PATH, loadConfig } from "../config/config.ts";
import { rowsGoNowhere } from "../config/outputs.ts";

const USAGE = `Usage: ja4ebpf --validate [--json] [--config FILE]

Checks the kernel (BTF, tracefs, kallsyms, ring buffers), capabilities, libbpf, libapr and every capture
method (tracepoint, raw_tp, fexit, kretprobe, uprobe, tc) by loading and attaching it for real, and whether
HTTPS plaintext capture works (libssl of the running servers, SSL_read uprobes attached for real).
  --json           one JSON document on stdout
  --config FILE    plan for this configuration, as \`run --config FILE\` would (default ${DEFAULT_CONFIG_PATH}
                   when it exists, else the embedded defaults): servers, uprobes, forced methods, channel`;

export interface ValidateReport {
  ok: boolean;
  /** Why the agent cannot run (empty when ok). */
  reasons: string[];
  kernel: string;
  arch: string;
  libbpf: { version: string; soname: string } | null;
  btf: boolean;
  tracefs: { path: string | null; mounted: boolean; error?: string } | null;
  kprobe_pmu: boolean;
  kallsyms: Record<string, boolean>;
  ringbuf: boolean;
  channel: "ringbuf" | "perfbuf" | null;
  capabilities: Record<string, boolean>;
  libapr: { path: string | null; source?: string; symbol: string; offset?: number; error?: string } | null;
  bpf_object: { bytes: number } | null;
  /** Per hook, what `run` attaches with this configuration, and every method probed. */
  hooks: {
    hook: string;
    /** The method asked of the plan: the configured one, or what the configuration implies (see why). */
    requested: string;
    /** Why requested is not the configured method (a server not listed, uprobes disabled). */
    why?: string;
    /** The method `run` attaches, or null. */
    method: string | null;
    /** The programs `run` attaches for it. */
    programs: string[];
    reason?: string;
    attempts: {
      method: string;
      ok: boolean;
      stage?: string;
      error?: string;
      verifier?: string;
      programs: string[];
    }[];
  }[];
  disabled_programs: string[];
  /** HTTPS plaintext capture (SSL_read uprobes on libssl); null when BPF could not be probed at all. */
  https: HttpsReport | null;
}

export interface HttpsLibrary {
  path: string;
  /** "process": mapped by a running server (the file its uprobes must hit); else the dynamic linker cache. */
  source: "process" | "ld.so.cache";
  /** Server processes mapping it (first few). */
  pids?: number[];
  /** File offset of each function, null when the library lacks it (SSL_read_ex before OpenSSL 1.1.1). */
  offsets: Record<string, number | null>;
  error?: string;
}

/** Where the HTTPS probes of one server file would go (the agent decides the same way, src/capture/tls_sites.ts). */
export interface HttpsMethod {
  /** The server file (nginx executable, mod_ssl.so). */
  file: string;
  source: "process" | "installed";
  /** server_symbol / plt: only the server traps; library: every process mapping libssl traps. */
  method: "server_symbol" | "plt" | "library";
  /** Probed functions or stubs, e.g. ngx_ssl_recv, SSL_read@plt. */
  sites: string[];
  /** Why the fallback (method library). */
  why?: string;
}

export interface HttpsReport {
  available: boolean;
  /** In words: why (not). */
  reason: string;
  /** The method chosen per server file. */
  methods: HttpsMethod[];
  libraries: HttpsLibrary[];
  /** The agent's SSL programs loaded and attached to the first usable library, then detached. */
  uprobes: { ok: boolean; library?: string; stage?: string; error?: string; programs: string[] } | null;
}

/** Builds the report; never throws for an environment problem (it becomes a reason). */
export async function validate(cfg: Config): Promise<ValidateReport> {
  const r: ValidateReport = {
    ok: false,
    reasons: [],
    kernel: Deno.osRelease(),
    arch: Deno.build.arch,
    libbpf: null,
    btf: false,
    tracefs: null,
    kprobe_pmu: false,
    kallsyms: {},
    ringbuf: false,
    channel: null,
    capabilities: {},
    libapr: null,
    bpf_object: null,
    hooks: [],
    disabled_programs: [],
    https: null,
  };
  // Loaded here, not at the top: a machine without libbpf still gets a report instead of a crash.
  let probes: typeof import("../bpf/probes.ts");
  let plan: typeof import("../bpf/plan.ts");
  try {
    probes = await import("../bpf/probes.ts");
    plan = await import("../bpf/plan.ts");
    const { libbpf } = await import("../bpf/ffi.ts");
    libbpf();
  } catch (e) {
    r.reasons.push(e instanceof Error ? e.message : String(e));
    return r;
  }
  const env = await probes.probeEnvironment();
  Object.assign(r, {
    libbpf: env.libbpf,
    btf: env.btf,
    tracefs: env.tracefs,
    kprobe_pmu: env.kprobePmu,
    kallsyms: env.kallsyms,
    ringbuf: env.ringbuf,
    capabilities: Object.fromEntries(Object.entries(env.capabilities).filter(([k]) => k !== "raw")),
    libapr: env.libapr,
  });
  // `run` refuses such a configuration: say so here too.
  const nowhere = rowsGoNowhere(cfg);
  if (nowhere) r.reasons.push(nowhere);
  if (cfg.capture.ringbuf === "ringbuf" && !env.ringbuf) {
    r.reasons.push("capture.ringbuf is 'ringbuf' but the kernel has no BPF ring buffers");
  }
  r.channel = plan.ringbufChosen(cfg.capture.ringbuf, () => env.ringbuf) ? "ringbuf" : "perfbuf";
  if (!env.canLoad) {
    r.reasons.push("missing capabilities: loading BPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN");
    return r;
  }
  let bytes: Uint8Array;
  try {
    bytes = (await import("../bpf/embedded.ts")).embeddedObject();
    r.bpf_object = { bytes: bytes.length };
  } catch (e) {
    r.reasons.push(
      `the BPF object is not built (scripts/build-bpf.sh): ${e instanceof Error ? e.message : e}`,
    );
    return r;
  }
  let p: import("../bpf/plan.ts").AttachPlan;
  try {
    p = await plan.planFromConfig(bytes, cfg, {
      exhaustive: true,
      host: { ringbuf: env.ringbuf, libapr: env.libapr },
    });
  } catch (e) {
    r.reasons.push(`the BPF object could not be opened: ${e instanceof Error ? e.message : e}`);
    return r;
  }
  r.hooks = p.hooks.map((h) => ({
    hook: h.hook,
    requested: h.requested,
    why: h.why,
    method: h.method,
    programs: h.programs.map((pa) => pa.program),
    reason: h.reason,
    attempts: h.attempts.map((a) => ({
      method: a.method,
      ok: a.ok,
      stage: a.stage,
      error: a.error,
      verifier: a.verifier,
      programs: a.programs,
    })),
  }));
  r.disabled_programs = p.disabled;
  r.https = await probeHttps(cfg, bytes, r.channel === "ringbuf");
  const nginx = p.hooks.find((h) => h.hook === "nginx");
  const apache = p.hooks.find((h) => h.hook === "apache");
  if (!nginx?.method && !apache?.method) {
    r.reasons.push(
      `no capture method works for nginx (${nginx?.reason ?? "-"}) nor for Apache (${apache?.reason ?? "-"})`,
    );
  }
  r.ok = r.reasons.length === 0;
  return r;
}

const SSL_PIDS_SHOWN = 8;

/** libssl files the servers map (or the linker would give them), their SSL_* offsets, a real uprobe attach. */
async function probeHttps(cfg: Config, bytes: Uint8Array, ringbuf: boolean): Promise<HttpsReport> {
  const { mappedFiles, parseLdSoCache, symbolOffset } = await import("../bpf/elf.ts");
  const { findServerProcesses } = await import("../capture/procfs.ts");
  const { probeVariant, SSL_UPROBES } = await import("../bpf/plan.ts");
  const servers = cfg.uprobes.servers as ("nginx" | "apache")[];
  const libraries: HttpsLibrary[] = [];
  const seen = new Set<string>();
  const real = (p: string) => {
    try {
      return Deno.realPathSync(p);
    } catch {
      return p;
    }
  };
  // The agent probes the files running servers map; a deleted mapping (upgraded, not restarted) is skipped.
  for (const m of mappedFiles(findServerProcesses(servers).map((s) => s.pid), /^libssl\.so/)) {
    if (m.deleted) continue;
    const lib = libraries.find((l) => l.path === m.path);
    if (lib) {
      if (lib.pids!.length < SSL_PIDS_SHOWN && !lib.pids!.includes(m.pid)) lib.pids!.push(m.pid);
      continue;
    }
    libraries.push({ path: m.path, source: "process", pids: [m.pid], offsets: {} });
    seen.add(real(m.path));
  }
  // Servers not running (yet): what the dynamic linker would load.
  try {
    for (const [name, paths] of parseLdSoCache(await Deno.readFile("/etc/ld.so.cache"))) {
      if (!/^libssl\.so\.\d/.test(name)) continue;
      for (const path of paths) {
        if (seen.has(real(path))) continue;
        try {
          if (!Deno.statSync(path).isFile) continue;
        } catch {
          continue;
        }
        seen.add(real(path));
        libraries.push({ path, source: "ld.so.cache", offsets: {} });
      }
    }
  } catch { /* no cache (musl, containers): running servers only */ }
  for (const lib of libraries) {
    for (const [fn] of SSL_UPROBES) {
      try {
        lib.offsets[fn] = (await symbolOffset(lib.path, fn)).offset;
      } catch (e) {
        lib.offsets[fn] = null;
        if (fn === "SSL_read") lib.error = e instanceof Error ? e.message : String(e);
      }
    }
  }
  const out: HttpsReport = {
    available: false,
    reason: "",
    methods: await httpsMethods(cfg, mappedFiles, findServerProcesses(servers).map((s) => s.pid)),
    libraries,
    uprobes: null,
  };
  const usable = libraries.find((l) => l.offsets.SSL_read != null);
  if (!cfg.uprobes.enabled) {
    out.reason = "uprobes.enabled is false";
    return out;
  }
  if (!usable) {
    out.reason = libraries.length
      ? "no libssl found exports SSL_read"
      : `no libssl mapped by ${servers.join(" or ")} nor in the dynamic linker cache`;
    return out;
  }
  const variant = SSL_UPROBES.filter(([fn]) => usable.offsets[fn] != null).flatMap(([fn, entry, ret]) =>
    [[entry, false], [ret, true]].map(([program, retprobe]) => ({
      program: program as string,
      attach: {
        kind: "uprobe_at" as const,
        path: usable.path,
        offset: usable.offsets[fn]!,
        retprobe: retprobe as boolean,
      },
    }))
  );
  const { quietLibbpf } = await import("../bpf/ffi.ts");
  const a = quietLibbpf(() => probeVariant(bytes, variant, { ringbuf }));
  out.uprobes = { ok: a.ok, library: usable.path, stage: a.stage, error: a.error, programs: a.programs };
  out.available = a.ok;
  const mapped = libraries.some((l) => l.source === "process");
  out.reason = a.ok
    ? mapped
      ? "uprobes attach: HTTPS requests are captured as plaintext (method per server file below)"
      : "uprobes attach: HTTPS requests are captured once a server runs (method per server file below)"
    : `SSL uprobes refused at ${a.stage}: ${a.error}`;
  return out;
}

/** The HTTPS probe method per server file: the running servers' files, else the installed ones. */
async function httpsMethods(
  cfg: Config,
  mapped: typeof import("../bpf/elf.ts").mappedFiles,
  pids: number[],
): Promise<HttpsMethod[]> {
  const { ElfFile } = await import("../bpf/elf.ts");
  const { SERVER_FILES, serverSites, installedServerFiles } = await import("../capture/tls_sites.ts");
  const files = new Map<string, HttpsMethod["source"]>();
  for (const m of mapped(pids, SERVER_FILES)) if (!m.deleted) files.set(m.path, "process");
  if (!files.size) { for (const f of installedServerFiles(cfg.uprobes.servers)) files.set(f, "installed"); }
  const out: HttpsMethod[] = [];
  for (const [file, source] of files) {
    if (cfg.uprobes.tls_probes === "library") {
      out.push({ file, source, method: "library", sites: [], why: "uprobes.tls_probes is library" });
      continue;
    }
    try {
      const c = serverSites(await ElfFile.open(file));
      out.push(
        c.method
          ? { file, source, method: c.method, sites: c.sites.map((s) => s.symbol) }
          : { file, source, method: "library", sites: [], why: c.why },
      );
    } catch (e) {
      out.push({
        file,
        source,
        method: "library",
        sites: [],
        why: e instanceof Error ? e.message : String(e),
      });
    }
  }
  return out;
}

const yes = (b: boolean) => (b ? "yes" : "no");

export function formatReport(r: ValidateReport): string {
  const lines: string[] = [];
  const row = (k: string, v: string) => lines.push(`${k.padEnd(14)}${v}`);
  row("kernel", `${r.kernel} (${r.arch})`);
  row("libbpf", r.libbpf ? `${r.libbpf.version} (${r.libbpf.soname})` : "not found");
  row("BTF", yes(r.btf));
  row(
    "tracefs",
    r.tracefs?.path
      ? `${r.tracefs.path}${r.tracefs.mounted ? " (mounted now)" : ""}`
      : r.tracefs?.error ?? "-",
  );
  row("kprobe PMU", yes(r.kprobe_pmu));
  row("kallsyms", Object.entries(r.kallsyms).map(([k, v]) => `${k} ${yes(v)}`).join(", ") || "-");
  row("ring buffer", `${yes(r.ringbuf)}; channel: ${r.channel ?? "-"}`);
  row("capabilities", Object.entries(r.capabilities).map(([k, v]) => `${k} ${yes(v)}`).join(", ") || "-");
  if (r.libapr) {
    row(
      "libapr",
      r.libapr.path
        ? `${r.libapr.path} (${r.libapr.source})` +
          (r.libapr.offset !== undefined
            ? `, ${r.libapr.symbol} at file offset 0x${r.libapr.offset.toString(16)}`
            : `: ${r.libapr.error}`)
        : r.libapr.error ?? "not found",
    );
  }
  if (r.bpf_object) row("BPF object", `${r.bpf_object.bytes} bytes`);
  if (r.hooks.length) lines.push("hooks:");
  for (const h of r.hooks) {
    const asked = h.why
      ? ` (${h.requested}: ${h.why})`
      : h.requested !== "auto"
      ? ` (configured: ${h.requested})`
      : "";
    lines.push(`  ${h.hook.padEnd(9)}${h.method ?? "NONE"}${asked}`);
    for (const a of h.attempts) {
      const what = a.ok
        ? (a.method === h.method ? "works (chosen)" : "works")
        : `refused at ${a.stage}: ${a.error}`;
      lines.push(`    ${a.method.padEnd(16)}${what}`);
      if (a.verifier) lines.push(`    ${"".padEnd(16)}verifier: ${a.verifier}`);
    }
    if (!h.method && h.reason && !h.attempts.length) lines.push(`    ${h.reason}`);
  }
  if (r.disabled_programs.length) lines.push(`not loaded    ${r.disabled_programs.join(", ")}`);
  if (r.https) {
    const h = r.https;
    row("HTTPS", `${h.available ? "plaintext capture available" : "NO plaintext capture"}: ${h.reason}`);
    for (const m of h.methods) {
      lines.push(
        `  method      ${m.method} for ${m.file} (${m.source}): ${
          m.method === "library"
            ? `probes on libssl, every process mapping it traps on every call (${m.why})`
            : `${m.sites.join(", ")}; only processes mapping this file trap`
        }`,
      );
    }
    for (const l of h.libraries) {
      const where = l.source === "process" ? `mapped by pid ${l.pids!.join(", ")}` : "ld.so.cache";
      const offs = Object.entries(l.offsets).map(([fn, o]) =>
        `${fn} ${o === null ? "absent" : "0x" + o.toString(16)}`
      );
      lines.push(`  libssl      ${l.path} (${where}): ${offs.join(", ")}${l.error ? ` (${l.error})` : ""}`);
    }
    if (h.uprobes) {
      lines.push(
        `  uprobes     ${
          h.uprobes.ok ? "work" : `refused at ${h.uprobes.stage}: ${h.uprobes.error}`
        } (${h.uprobes.programs.length} programs on ${h.uprobes.library})`,
      );
    }
  }
  lines.push(
    r.ok ? "result        OK: the agent can run here" : `result        CANNOT RUN: ${r.reasons.join("; ")}`,
  );
  return lines.join("\n");
}

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseFlags(args, { json: { type: "boolean" }, config: { type: "string" } }, USAGE);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  let cfg: Config;
  try {
    // The configuration `run` would read: --config, else the default file when it exists, else defaults.
    cfg = await loadConfig(values.config as string | undefined);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      return 1;
    }
    throw e;
  }
  const report = await validate(cfg);
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.ok ? 0 : 1;
}
