/**
 * `ja4ebpf --validate [--json]`: a dry run of the attach plan. Probes the kernel for real (load and
 * attach each method, then detach), reports what would be used and why the rest was refused.
 * Exit 0 when the agent can run here, 1 otherwise with the reason in words.
 */
import { parseFlags } from "./args.ts";
import { type Config, ConfigError, DEFAULT_CONFIG, loadConfig } from "../config/config.ts";

const USAGE = `Usage: ja4ebpf --validate [--json] [--config FILE]

Checks the kernel (BTF, tracefs, kallsyms, ring buffers), capabilities, libbpf, libapr and every capture
method (tracepoint, raw_tp, fexit, kretprobe, uprobe, tc) by loading and attaching it for real.
  --json           one JSON document on stdout
  --config FILE    use the capture settings (forced methods, interfaces) of this configuration`;

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
  hooks: {
    hook: string;
    requested: string;
    method: string | null;
    reason?: string;
    attempts: { method: string; ok: boolean; stage?: string; error?: string; programs: string[] }[];
  }[];
  disabled_programs: string[];
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
  const wantRing = cfg.capture.ringbuf;
  if (wantRing === "ringbuf" && !env.ringbuf) {
    r.reasons.push("capture.ringbuf is 'ringbuf' but the kernel has no BPF ring buffers");
  }
  r.channel = wantRing === "perfbuf" ? "perfbuf" : env.ringbuf ? "ringbuf" : "perfbuf";
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
  const ifaces = cfg.capture.interfaces.filter((i) => i !== "auto");
  let p: import("../bpf/plan.ts").AttachPlan;
  try {
    p = plan.makePlan(bytes, {
      methods: { nginx: cfg.capture.nginx, apache: cfg.capture.apache },
      tcInterfaces: ifaces.length ? ifaces : ["lo"],
      libapr: env.libapr,
      exhaustive: true,
      ringbuf: r.channel === "ringbuf",
    });
  } catch (e) {
    r.reasons.push(`the BPF object could not be opened: ${e instanceof Error ? e.message : e}`);
    return r;
  }
  r.hooks = p.hooks.map((h) => ({
    hook: h.hook,
    requested: h.requested,
    method: h.method,
    reason: h.reason,
    attempts: h.attempts.map((a) => ({
      method: a.method,
      ok: a.ok,
      stage: a.stage,
      error: a.error,
      programs: a.programs,
    })),
  }));
  r.disabled_programs = p.disabled;
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
    lines.push(
      `  ${h.hook.padEnd(9)}${h.method ?? "NONE"}${
        h.requested !== "auto" ? ` (configured: ${h.requested})` : ""
      }`,
    );
    for (const a of h.attempts) {
      const what = a.ok
        ? (a.method === h.method ? "works (chosen)" : "works")
        : `refused at ${a.stage}: ${a.error}`;
      lines.push(`    ${a.method.padEnd(16)}${what}`);
    }
    if (!h.method && h.reason && !h.attempts.length) lines.push(`    ${h.reason}`);
  }
  if (r.disabled_programs.length) lines.push(`not loaded    ${r.disabled_programs.join(", ")}`);
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
    cfg = typeof values.config === "string"
      ? await loadConfig(values.config)
      : structuredClone(DEFAULT_CONFIG) as Config;
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
