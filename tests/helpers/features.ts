/**
 * "Require this feature where the kernel has it": whether a kernel feature must be there is decided from
 * evidence that does not come from the code under test — the kernel's build configuration (/proc/config.gz
 * or /boot/config-RELEASE) and a short table of kernels known to refuse something their configuration
 * allows (measured in docs/validation.md). A test then checks what it observed against that expectation:
 * a feature that should be there and is not FAILS the test; one that is absent as expected lets the caller
 * mark its check ignored (deno test counts it, scripts/test.sh prints the count); one that is present
 * although the evidence says otherwise fails too, so the evidence cannot silently go stale.
 *
 * Also a command for shell scripts: `deno run -A tests/helpers/features.ts refused` (Deno wants full access for /proc) prints the
 * capture methods this kernel is expected to refuse (tests/kernels/host.sh passes them to the checks).
 */
import { AssertionError } from "../../src/testing/asserts.ts";

/** Kernel features the agent's capture methods need. */
export type Feature = "kprobe" | "fentry" | "uprobe" | "tracepoint" | "raw_tp" | "tc" | "btf";

export const FEATURES: readonly Feature[] = [
  "kprobe",
  "fentry",
  "uprobe",
  "tracepoint",
  "raw_tp",
  "tc",
  "btf",
];

/** The agent's nginx capture method (`capture.nginx_method`) → the kernel feature it needs. */
export const METHOD_FEATURE: Record<string, Feature> = {
  kretprobe: "kprobe",
  fexit: "fentry",
  tracepoint: "tracepoint",
  raw_tp: "raw_tp",
};

/** Build options each feature needs (`=y` or `=m`). */
const NEEDS: Record<Feature, string[]> = {
  kprobe: ["CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_BPF_EVENTS"],
  fentry: ["CONFIG_BPF_JIT", "CONFIG_DEBUG_INFO_BTF", "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"],
  uprobe: ["CONFIG_UPROBES", "CONFIG_UPROBE_EVENTS", "CONFIG_BPF_EVENTS"],
  tracepoint: ["CONFIG_FTRACE_SYSCALLS", "CONFIG_BPF_EVENTS"],
  raw_tp: ["CONFIG_TRACEPOINTS", "CONFIG_BPF_EVENTS"],
  tc: ["CONFIG_NET_CLS_BPF", "CONFIG_NET_SCH_INGRESS"],
  btf: ["CONFIG_DEBUG_INFO_BTF"],
};

/**
 * Kernels that refuse a feature their configuration allows, as measured (docs/validation.md). The host the
 * project is developed on runs a 6.18 kernel whose BPF trampolines are refused with EPERM at load.
 */
export const KNOWN_KERNELS: { release: RegExp; absent: Partial<Record<Feature, string>> }[] = [
  {
    release: /^6\.18\.44-fc-v\d+$/,
    absent: {
      fentry: "fentry/fexit refused with EPERM at load on this kernel (docs/validation.md, host rows)",
    },
  },
];

export interface KernelFacts {
  /** uname -r. */
  release: string;
  /** Where the build configuration came from. */
  configSource: string;
  /** CONFIG_* → y / m / a value; options that are "not set" are absent. */
  config: Map<string, string>;
}

async function readConfig(release: string): Promise<{ source: string; text: string } | undefined> {
  try {
    const f = await Deno.open("/proc/config.gz");
    const text = await new Response(f.readable.pipeThrough(new DecompressionStream("gzip"))).text();
    return { source: "/proc/config.gz", text };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e; // not built with IKCONFIG_PROC: try the files
  }
  for (const path of [`/boot/config-${release}`, `/lib/modules/${release}/build/.config`]) {
    try {
      return { source: path, text: await Deno.readTextFile(path) };
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return undefined;
}

/** Parses a kernel .config: `CONFIG_X=y` lines (comments and "is not set" lines leave the option out). */
export function parseKernelConfig(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split("\n")) {
    const r = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line.trim());
    if (r) m.set(r[1], r[2].replace(/^"|"$/g, ""));
  }
  return m;
}

let cached: Promise<KernelFacts> | undefined;

/** The running kernel's release and build configuration; no configuration found is an error, not a guess. */
export function kernelFacts(): Promise<KernelFacts> {
  cached ??= (async () => {
    const release = Deno.osRelease();
    const cfg = await readConfig(release);
    if (!cfg) {
      throw new Error(
        `no build configuration for kernel ${release} (/proc/config.gz, /boot/config-${release}): ` +
          "cannot tell which features it must have",
      );
    }
    return { release, configSource: cfg.source, config: parseKernelConfig(cfg.text) };
  })();
  return cached;
}

/** Whether the kernel described by facts must have feature, and why. */
export function expectFeature(feature: Feature, facts: KernelFacts): { present: boolean; evidence: string } {
  const missing = NEEDS[feature].filter((k) => !/^[ym]$/.test(facts.config.get(k) ?? ""));
  if (missing.length) {
    return { present: false, evidence: `${missing.join(", ")} not set in ${facts.configSource}` };
  }
  for (const k of KNOWN_KERNELS) {
    const why = k.release.test(facts.release) ? k.absent[feature] : undefined;
    if (why) return { present: false, evidence: `kernel ${facts.release}: ${why}` };
  }
  return { present: true, evidence: `${NEEDS[feature].join(", ")} set in ${facts.configSource}` };
}

/**
 * Checks an observation against the expectation for this kernel. Returns true when the feature is there
 * (run the check), false when it is absent as expected (mark the check ignored: `ignore: !ok`). Throws an
 * AssertionError when it should be there and is not, or is there although the evidence says it cannot be.
 */
export async function requireFeature(
  feature: Feature,
  present: boolean,
  what: string,
  facts?: KernelFacts,
): Promise<boolean> {
  facts ??= await kernelFacts();
  const want = expectFeature(feature, facts);
  if (want.present && !present) {
    throw new AssertionError(
      `${what}: missing, but kernel ${facts.release} has ${feature} (${want.evidence})`,
    );
  }
  if (!want.present && present) {
    throw new AssertionError(
      `${what}: present, but ${feature} was expected absent (${want.evidence}); update the evidence`,
    );
  }
  if (!present) console.warn(`ignored: ${what}: no ${feature} on kernel ${facts.release} (${want.evidence})`);
  return present;
}

/** Capture methods (METHOD_FEATURE) this kernel is expected to refuse. */
export async function expectedRefusals(): Promise<string[]> {
  const facts = await kernelFacts();
  return Object.entries(METHOD_FEATURE).filter(([, f]) => !expectFeature(f, facts).present).map(([m]) => m);
}

if (import.meta.main) {
  if (Deno.args[0] !== "refused") {
    console.error("usage: features.ts refused   (capture methods this kernel is expected to refuse)");
    Deno.exit(2);
  }
  console.log((await expectedRefusals()).join(" "));
}
