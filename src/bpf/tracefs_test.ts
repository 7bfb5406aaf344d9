/**
 * A host as it boots may have no tracefs mounted (no systemd sys-kernel-tracing.mount): libbpf then cannot
 * attach a tracepoint by name. These run in a private mount namespace (`unshare --mount`) with tracefs and
 * debugfs unmounted there, so the host's mounts (and other runs on it) are untouched.
 */
import { assert, assertEquals } from "../testing/asserts.ts";
import { requireRoot } from "../../tests/fixtures/bpf/fixture.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Runs sh -c script in a new mount namespace where tracefs (and debugfs) are unmounted first. */
async function withoutTracefs(script: string): Promise<{ code: number; out: string }> {
  const prelude = "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; " +
    "umount /sys/kernel/debug 2>/dev/null; " +
    // The precondition: nothing at either place libbpf looks.
    "if [ -d /sys/kernel/tracing/events ] || [ -d /sys/kernel/debug/tracing/events ]; then " +
    "echo 'tracefs still mounted'; exit 99; fi; ";
  let res: Deno.CommandOutput;
  try {
    res = await new Deno.Command("unshare", {
      args: ["--mount", "--propagation", "private", "sh", "-c", prelude + script],
      cwd: ROOT,
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(`this test needs unshare (apt install util-linux): ${e}`);
  }
  const dec = new TextDecoder();
  return { code: res.code, out: dec.decode(res.stdout) + dec.decode(res.stderr) };
}

Deno.test("tracefs: ensureTracefs mounts it where the boot left none", async () => {
  requireRoot();
  const deno = Deno.execPath();
  const code = 'import { ensureTracefs } from "./src/bpf/tracefs.ts"; ' +
    "const a = ensureTracefs(); const b = ensureTracefs(); console.log(JSON.stringify([a, b]));";
  const r = await withoutTracefs(`exec "${deno}" eval '${code}'`);
  assertEquals(r.code, 0, r.out);
  const [first, second] = JSON.parse(r.out.trim().split("\n").pop()!);
  assertEquals(first, { path: "/sys/kernel/tracing", mounted: true }, "mounted by the first call");
  assertEquals(second, { path: "/sys/kernel/tracing", mounted: false }, "found by the second");
});

Deno.test("tracefs: the BPF tests that attach tracepoints by name pass with tracefs unmounted", async () => {
  requireRoot();
  // The tests that failed on a freshly booted host, each in a fresh namespace: whichever runs first finds
  // no tracefs.
  for (const file of ["src/bpf/object_test.ts", "src/bpf/ringbuf_test.ts", "src/bpf/kprobe_events_test.ts"]) {
    const r = await withoutTracefs(`exec "${Deno.execPath()}" test -A --no-check ${file}`);
    assert(
      r.code === 0 && /^ok \| \d+ passed/m.test(r.out),
      `${file} without tracefs:\n${r.out.slice(-3000)}`,
    );
  }
});
