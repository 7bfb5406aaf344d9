import { assert, assertEquals, assertMatch, assertStringIncludes } from "../testing/asserts.ts";
import type { ValidateReport } from "./validate.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("--validate --json: a dry run of the plan on this kernel", async () => {
  if (Deno.uid() !== 0) throw new Error("--validate probes BPF for real: run as root");
  const { code, stdout, stderr } = await run(["--validate", "--json"]);
  let r: ValidateReport;
  try {
    r = JSON.parse(stdout);
  } catch {
    throw new Error(`not JSON on stdout:\n${stdout}\nstderr:\n${stderr}`);
  }
  assertEquals(code, 0, `exit code (reasons: ${r.reasons.join("; ")})`);
  assertEquals([r.ok, r.reasons], [true, []]);
  assertEquals(r.kernel, Deno.osRelease());
  assertMatch(r.libbpf!.version, /^v\d+\.\d+/);
  assert(r.btf && r.ringbuf && r.channel === "ringbuf");
  assertEquals(r.capabilities.CAP_BPF, true);
  assertEquals(r.kallsyms.__x64_sys_recvfrom, true);
  assertMatch(r.libapr!.path!, /libapr-1\.so\.0$/);
  assert(r.libapr!.offset! > 0);
  const hook = (name: string) => r.hooks.find((h) => h.hook === name)!;
  assertEquals(hook("nginx").method, "tracepoint");
  const att = Object.fromEntries(hook("nginx").attempts.map((a) => [a.method, a]));
  assertEquals(Object.keys(att), ["tracepoint", "raw_tp", "fexit", "kretprobe"], "every method probed");
  assertMatch(att.fexit.error!, /^EPERM/);
  assertMatch(att.kretprobe.error!, /^ENOENT/);
  assertEquals(hook("apache").method, "uprobe");
  assertEquals(hook("packets").method, "tc");
  assert(r.disabled_programs.includes("fexit_recvfrom"));
});

Deno.test("--validate: human output, forced method from the config, bad config", async (t) => {
  if (Deno.uid() !== 0) throw new Error("--validate probes BPF for real: run as root");
  const dir = await Deno.makeTempDir();
  try {
    await t.step("forced fexit: nginx has no method, the refusal is named; Apache still works", async () => {
      await Deno.writeTextFile(`${dir}/c.yaml`, "capture:\n  nginx: fexit\n");
      const { code, stdout } = await run(["--validate", "--config", `${dir}/c.yaml`]);
      assertEquals(code, 0);
      assertMatch(stdout, /nginx +NONE \(configured: fexit\)/);
      assertMatch(stdout, /fexit +refused at load: EPERM: Operation not permitted/);
      assertStringIncludes(stdout, "result        OK");
    });
    await t.step("an unreadable config: exit 1 with the reason", async () => {
      const { code, stderr } = await run(["--validate", "--config", `${dir}/missing.yaml`]);
      assertEquals(code, 1);
      assertStringIncludes(stderr, "cannot read");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
