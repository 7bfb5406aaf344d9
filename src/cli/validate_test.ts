import { assert, assertEquals, assertMatch, assertStringIncludes } from "../testing/asserts.ts";
import { validate, type ValidateReport } from "./validate.ts";
import { mappedFiles } from "../bpf/elf.ts";
import { Agent } from "../agent/agent.ts";
import { parseConfig } from "../config/config.ts";
import { setLogSink } from "../log.ts";
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
      // What run does without uprobes, and why: Apache is read through the read tracepoints.
      assertMatch(stdout, /^ {2}apache +read_tracepoint \(read_tracepoint: uprobes.enabled is false\)$/m);
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

Deno.test("run and --validate attach the same plan for the same configuration", async (t) => {
  if (Deno.uid() !== 0) throw new Error("the agent and --validate probe BPF for real: run as root");
  // [name, YAML, the method run attaches per hook on this kernel (nginx, apache), run starts]
  const cases: [string, string, [string | null, string | null], boolean][] = [
    ["defaults", "", ["tracepoint", "uprobe"], true],
    ["uprobes off: Apache on the read tracepoints", "uprobes:\n  enabled: false\n", [
      "tracepoint",
      "read_tracepoint",
    ], true],
    ["nginx only", "uprobes:\n  servers: [nginx]\n", ["tracepoint", null], true],
    ["Apache only, nginx forced elsewhere", "uprobes:\n  servers: [apache]\ncapture:\n  nginx: raw_tp\n", [
      null,
      "uprobe",
    ], true],
    ["forced raw_tp on the perf buffer", "capture:\n  nginx: raw_tp\n  ringbuf: perfbuf\n", [
      "raw_tp",
      "uprobe",
    ], true],
    ["kretprobe with its maxactive", "capture:\n  nginx: kretprobe\n  kretprobe_maxactive: 64\n", [
      null,
      "uprobe",
    ], true],
    [
      "nothing to capture: nginx only, forced fexit",
      "uprobes:\n  servers: [nginx]\ncapture:\n  nginx: fexit\n",
      [null, null],
      false,
    ],
  ];
  const lines: string[] = [];
  const prevSink = setLogSink((l) => lines.push(l));
  try {
    for (const [name, yaml, [nginx, apache], starts] of cases) {
      await t.step(name, async () => {
        const cfg = parseConfig(yaml, "c.yaml");
        // Nothing but the plan differs between cases: no metrics port, tc on loopback only, rows discarded.
        cfg.metrics.enabled = false;
        cfg.capture.interfaces = ["lo"];
        const agent = new Agent(cfg, { stdout: { writeSync: (p) => p.length } });
        let started = true;
        try {
          await agent.start();
        } catch (e) {
          started = false;
          assertStringIncludes(String(e), "no capture method works");
        } finally {
          await agent.stop();
        }
        const r = await validate(cfg);
        const attached = (hooks: { hook: string; method: string | null }[]) =>
          hooks.map((h) => [h.hook, h.method]);
        // What run attached, per hook, is what --validate reports, and what this kernel gives.
        assertEquals(
          r.hooks.map((h) => ({
            hook: h.hook,
            requested: h.requested,
            why: h.why,
            method: h.method,
            programs: h.programs,
          })),
          agent.plan.hooks.map((h) => ({
            hook: h.hook,
            requested: h.requested,
            why: h.why,
            method: h.method,
            programs: h.programs.map((p) => p.program),
          })),
        );
        assertEquals(attached(r.hooks).slice(0, 2), [["nginx", nginx], ["apache", apache]]);
        assertEquals([r.channel, r.disabled_programs], [
          agent.plan.ringbuf ? "ringbuf" : "perfbuf",
          agent.plan.disabled,
        ]);
        assertEquals([started, r.ok], [starts, starts], r.reasons.join("; "));
        // Beside run's choice, --validate probed every method of a hook it did not force.
        if (cfg.uprobes.servers.includes("nginx") && cfg.capture.nginx === "auto") {
          assertEquals(r.hooks[0].attempts.map((a) => a.method), [
            "tracepoint",
            "raw_tp",
            "fexit",
            "kretprobe",
          ]);
        }
      });
    }
  } finally {
    setLogSink(prevSink);
  }
});
