/** requireFeature's decisions, on made-up kernels and on the running one (its build configuration only). */
import { assert, assertEquals, assertMatch, assertRejects } from "../../src/testing/asserts.ts";
import {
  expectFeature,
  type KernelFacts,
  kernelFacts,
  parseKernelConfig,
  requireFeature,
} from "./features.ts";

const FULL = [
  "CONFIG_BPF_SYSCALL=y",
  "CONFIG_BPF_EVENTS=y",
  "CONFIG_BPF_JIT=y",
  "CONFIG_DEBUG_INFO_BTF=y",
  "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y",
  "CONFIG_KPROBES=y",
  "CONFIG_KPROBE_EVENTS=y",
  "CONFIG_UPROBES=y",
  "CONFIG_UPROBE_EVENTS=y",
  "CONFIG_FTRACE_SYSCALLS=y",
  "CONFIG_TRACEPOINTS=y",
  "CONFIG_NET_CLS_BPF=m",
  "CONFIG_NET_SCH_INGRESS=m",
].join("\n");

const facts = (release: string, config: string): KernelFacts => ({
  release,
  configSource: "test",
  config: parseKernelConfig(config),
});

Deno.test("parseKernelConfig: set options with their values, 'is not set' and comments left out", () => {
  const m = parseKernelConfig('# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_D="x y"\n');
  assertEquals([...m], [["CONFIG_A", "y"], ["CONFIG_C", "m"], ["CONFIG_D", "x y"]]);
});

Deno.test("expectFeature: from the build options, then the known kernels", () => {
  const debian = facts("6.1.0-56-cloud-amd64", FULL);
  for (const f of ["kprobe", "fentry", "uprobe", "tracepoint", "raw_tp", "tc", "btf"] as const) {
    assertEquals(expectFeature(f, debian).present, true, f);
  }
  const noKprobes = facts("6.1.0-x", FULL.replace("CONFIG_KPROBES=y", "# CONFIG_KPROBES is not set"));
  const k = expectFeature("kprobe", noKprobes);
  assertEquals(k.present, false);
  assertMatch(k.evidence, /CONFIG_KPROBES not set/);
  assertEquals(expectFeature("uprobe", noKprobes).present, true);
  // This project's host: every option there, fentry refused all the same (docs/validation.md).
  const host = expectFeature("fentry", facts("6.18.44-fc-v1252", FULL));
  assertEquals(host.present, false);
  assertMatch(host.evidence, /EPERM/);
});

Deno.test("requireFeature: fails when a feature that should be there is not, and when the evidence is stale", async () => {
  const k = facts("6.1.0-x", FULL.replace("CONFIG_KPROBES=y", ""));
  assertEquals(await requireFeature("uprobe", true, "uprobe rows", k), true);
  assertEquals(await requireFeature("kprobe", false, "kretprobe rows", k), false);
  await assertRejects(() => requireFeature("uprobe", false, "uprobe rows", k), Error, "missing, but kernel");
  await assertRejects(() => requireFeature("kprobe", true, "kretprobe rows", k), Error, "expected absent");
});

Deno.test("kernelFacts: the running kernel's build configuration is found and has BPF", async () => {
  const f = await kernelFacts();
  assertEquals(f.release, Deno.osRelease());
  assert(f.config.get("CONFIG_BPF_SYSCALL") === "y", `CONFIG_BPF_SYSCALL=y in ${f.configSource}`);
});
