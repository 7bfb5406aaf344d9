import { assert, assertEquals, assertMatch, assertStringIncludes } from "../testing/asserts.ts";
import type { ValidateReport } from "./validate.ts";
import { mappedFiles } from "../bpf/elf.ts";
import { startApache } from "../../tests/helpers/servers.ts";

const APACHE = 27081;

async function tool(cmd: string, args: string[]): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`${cmd} is needed for this test (apt install binutils): ${e}`);
  }
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** File offset of a dynamic symbol per binutils (nm address through readelf's PT_LOAD table). */
async function binutilsOffset(path: string, sym: string): Promise<number> {
  const nm = await tool("nm", ["-D", "--defined-only", path]);
  const line = nm.split("\n").find((l) => l.split(/\s+/)[2]?.replace(/@.*/, "") === sym);
  if (!line) throw new Error(`nm: no ${sym} in ${path}`);
  const value = parseInt(line.split(/\s+/)[0], 16);
  for (const l of (await tool("readelf", ["-lW", path])).split("\n")) {
    const m = l.match(/^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)/);
    if (!m) continue;
    const [off, vaddr, filesz] = [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
    if (value >= vaddr && value < vaddr + filesz) return value - vaddr + off;
  }
  throw new Error(`readelf: ${sym} of ${path} in no LOAD segment`);
}

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
  // A running Apache (mod_ssl loaded) maps libssl: the report must name that very file.
  await using apache = await startApache({ port: APACHE, workers: 1, http2: false });
  const ssl = mappedFiles([apache.pids().master], /^libssl\.so/);
  assertEquals(ssl.length, 1, "Apache maps one libssl");
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

  const https = r.https!;
  assertEquals([https.available, https.uprobes?.ok], [true, true], https.reason);
  const lib = https.libraries.find((l) => l.path === ssl[0].path);
  assert(lib, `${ssl[0].path} listed: ${JSON.stringify(https.libraries)}`);
  assertEquals(lib.source, "process");
  for (const fn of ["SSL_read", "SSL_read_ex", "SSL_do_handshake"]) {
    assertEquals(lib.offsets[fn], await binutilsOffset(lib.path, fn), `${fn} offset`);
  }
  assertEquals(https.uprobes!.programs.length, 6, "entry + return per function");
  // The running Apache's mod_ssl.so is probed at its SSL_read PLT stub: only Apache traps.
  const modSsl = https.methods.find((m) => /mod_ssl\.so$/.test(m.file));
  assert(modSsl, `mod_ssl.so in the methods: ${JSON.stringify(https.methods)}`);
  assertEquals([modSsl.source, modSsl.method], ["process", "plt"]);
  assert(modSsl.sites.includes("SSL_read@plt"), modSsl.sites.join(", "));
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
      assertMatch(stdout, /^HTTPS +plaintext capture available: uprobes attach/m);
      // The method per server file: nginx's own function, mod_ssl's PLT stubs.
      assertMatch(stdout, /^ {2}method +server_symbol for \/\S*nginx \(\w+\): ngx_ssl_recv; only processes/m);
      assertMatch(stdout, /^ {2}method +plt for \/\S*mod_ssl\.so \(\w+\): .*SSL_read@plt/m);
      assertMatch(
        stdout,
        /^ {2}libssl +\/\S+\/libssl\.so\.\d\S* \(.*\): SSL_do_handshake 0x[0-9a-f]+, SSL_read 0x/m,
      );
      assertMatch(stdout, /^ {2}uprobes +work \(6 programs on /m);
    });
    await t.step("tls_probes: library: the fallback and its cost are named", async () => {
      await Deno.writeTextFile(`${dir}/l.yaml`, "uprobes:\n  tls_probes: library\n");
      const { code, stdout } = await run(["--validate", "--config", `${dir}/l.yaml`]);
      assertEquals(code, 0);
      assertMatch(
        stdout,
        /^ {2}method +library for \/\S*nginx .*every process mapping it traps.*\(uprobes\.tls_probes is library\)$/m,
      );
    });
    await t.step("uprobes disabled: no HTTPS plaintext capture, said so; still OK", async () => {
      await Deno.writeTextFile(`${dir}/u.yaml`, "uprobes:\n  enabled: false\n");
      const { code, stdout } = await run(["--validate", "--config", `${dir}/u.yaml`]);
      assertEquals(code, 0);
      assertMatch(stdout, /^HTTPS +NO plaintext capture: uprobes.enabled is false$/m);
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
