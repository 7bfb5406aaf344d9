/**
 * Boots Debian 12's 6.1 kernel under QEMU (TCG) and checks, inside it, that the agent validates and captures
 * nginx and Apache requests with the right JA4H; the same for Debian 12's arm64 kernel under
 * qemu-system-aarch64 (a smoke check: boot, --validate, nginx on raw_tp, ~2.5 min). The full matrix (5.10, 6.1,
 * 6.12, 6.1 arm64, every method, the idle recvfrom adversary, perf buffer, the host) is tests/kernels/matrix.sh;
 * this keeps one kernel per architecture in the normal test run, and the host's own kernel with a method it
 * refuses.
 * Needs: root, qemu-system-x86, qemu-system-arm, gcc-aarch64-linux-gnu, busybox-static, nginx, apache2, curl,
 * gcc, libbpf1, npm, and Debian's mirror and the npm registry on first run (kernels, arm64 packages, Deno's
 * linux-arm64 runtime).
 */
import { assert, assertEquals, assertGreater, assertMatch } from "../../src/testing/asserts.ts";
import { type GuestLine, lockupLines, parseKernelRun, runKernel } from "./results.ts";
import { requireFeature } from "../helpers/features.ts";

const REQUESTS = 5;

async function requireTools(extra: string[][] = []): Promise<void> {
  const missing: string[] = [];
  for (
    const [tool, pkg] of [
      ...extra,
      ["qemu-system-x86_64", "qemu-system-x86"],
      ["busybox", "busybox-static"],
      ["nginx", "nginx-light"],
      ["apache2", "apache2"],
      ["curl", "curl"],
      ["apt-get", "apt"],
      ["dpkg-deb", "dpkg"],
    ]
  ) {
    const r = await new Deno.Command("bash", { args: ["-c", `command -v ${tool}`], stdout: "null" }).output();
    if (!r.success) missing.push(`${tool} (apt-get install ${pkg})`);
  }
  if (missing.length) throw new Error(`kernel test needs: ${missing.join(", ")}`);
}

const one = (lines: GuestLine[], kind: string, key: string) =>
  lines.find((l) => l.kind === kind && key in l.fields);

Deno.test("parseKernelRun reads kinds, quoted values and the VALIDATE JSON", () => {
  const lines = parseKernelRun(
    [
      "initramfs: 125M in x.cpio",
      'INFO version="Linux version 6.1.0 (x) #1 SMP" t=5.1',
      'VALIDATE rc=0 json={  "ok": true,  "n": 1} t=9.5',
      "METHOD method=auto server=nginx sent=5 rows=4 t=20",
      "log: /tmp/x",
    ].join("\n"),
  );
  assertEquals(lines.map((l) => l.kind), ["INFO", "VALIDATE", "METHOD"]);
  assertEquals(lines[0].fields.version, "Linux version 6.1.0 (x) #1 SMP");
  assertEquals(JSON.parse(lines[1].fields.json), { ok: true, n: 1 });
  assertEquals(lines[2].fields.rows, "4");
});

Deno.test("console-lines.sh: a kernel message inside a report line is cut out and the line joined", async () => {
  const consoleLog = [
    "[    1.000000] Linux version 6.1.0-arm64",
    'JA4K VALIDATE rc=0 json={  "ok": true,  "hooks": [    "tp_exit_readv[   85.982722] hrtimer: interrupt took 11557648 ns\r',
    '",    "tp_sys_exit_recvfrom"  ]} t=86.1\r',
    "[   86.500000] a message of its own line",
    "JA4K METHOD method=raw_tp server=nginx sent=5 rows=5 t=90",
  ].join("\n");
  const p = new Deno.Command("sh", {
    args: [new URL("./console-lines.sh", import.meta.url).pathname],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(consoleLog + "\n"));
  await w.close();
  const lines = parseKernelRun(new TextDecoder().decode((await p.output()).stdout));
  assertEquals(lines.map((l) => l.kind), ["VALIDATE", "METHOD"]);
  assertEquals(JSON.parse(lines[0].fields.json), {
    ok: true,
    hooks: ["tp_exit_readv", "tp_sys_exit_recvfrom"],
  });
});

Deno.test("lockupLines keeps a soft lockup's reports and call traces, nothing before them", async (t) => {
  const log = [
    "JA4K VALIDATE rc=0 json={} t=26.43",
    '[    2.627664] Unstable clock detected, switching default tracing clock to "global"',
    "[   64.626900] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [sh:101]\r",
    "[   64.626950] Modules linked in: sch_ingress",
    "[   64.627000] RIP: 0010:smp_call_function_many_cond+0x11e/0x3f0",
    "[   64.627050] Call Trace:",
    "[   64.627060]  <TASK>",
    "[   64.627100]  text_poke_bp_batch+0x1a2/0x2c0",
    "[   84.730699] watchdog: BUG: soft lockup - CPU#1 stuck for 44s! [deno:209]",
  ].join("\n");
  await t.step("a log with a lockup", () => {
    assertEquals(lockupLines(log), [
      "[   64.626900] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [sh:101]",
      "[   64.627000] RIP: 0010:smp_call_function_many_cond+0x11e/0x3f0",
      "[   64.627050] Call Trace:",
      "[   64.627100]  text_poke_bp_batch+0x1a2/0x2c0",
      "[   84.730699] watchdog: BUG: soft lockup - CPU#1 stuck for 44s! [deno:209]",
    ]);
  });
  await t.step("a log without one", () => {
    assertEquals(lockupLines(log.split("\n").slice(0, 2).join("\n")), []);
    assertEquals(lockupLines(""), []);
  });
});

Deno.test({
  name: "Debian 6.1 under QEMU: validate, then nginx and Apache captured with the right JA4H",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await requireTools();
    const run = await runKernel("6.1", {
      requests: REQUESTS,
      methods: ["auto"],
      idle: 0,
      perfbuf: false,
      timeoutSeconds: 115,
    });
    const ctx = `\n--- run.sh (${run.seconds.toFixed(0)} s, exit ${run.code}) ---\n${run.stdout}\n${
      run.stderr.slice(-2000)
    }`;
    const L = run.lines;
    assert(run.code !== 124, `the VM timed out${ctx}`);
    assert(one(L, "BOOT", "uptime"), `the guest never started its init${ctx}`);
    assert(one(L, "INFO", "kernel")?.fields.kernel.startsWith("6.1."), `not a 6.1 kernel${ctx}`);
    assertEquals(one(L, "CHECK", "symbol")?.fields.present, "1", `__x64_sys_recvfrom not in kallsyms${ctx}`);
    assertEquals(one(L, "CHECK", "btf")?.fields.btf, "1", `no BTF${ctx}`);
    for (const server of ["nginx", "apache"]) {
      const s = L.find((l) => l.kind === "CHECK" && l.fields.server === server);
      assertEquals(s?.fields.ok, String(REQUESTS), `${server} did not answer every request${ctx}`);
    }
    assert(!L.some((l) => l.kind === "SKIP"), `an agent command is still a placeholder${ctx}`);
    const v = one(L, "VALIDATE", "rc");
    assertEquals(v?.fields.rc, "0", `ja4ebpf --validate failed${ctx}`);
    assertEquals(JSON.parse(v!.fields.json).ok, true, `--validate --json says not ok${ctx}`);
    for (const server of ["nginx", "apache"]) {
      const m = L.find((l) =>
        l.kind === "METHOD" && l.fields.method === "auto" && l.fields.server === server
      );
      assert(m, `no capture result for ${server}${ctx}`);
      assert(m.fields.attached !== "0", `${server}: no method attached${ctx}`);
      assertEquals(m.fields.sent, String(REQUESTS));
      assertEquals(m.fields.rows, String(REQUESTS), `${server}: rows != requests${ctx}`);
      assertEquals(m.fields.right_ja4h, String(REQUESTS), `${server}: wrong JA4H${ctx}`);
    }
    assertEquals(one(L, "SUMMARY", "failures")?.fields.failures, "0", `the guest reported failures${ctx}`);
    assertEquals(run.code, 0, `run.sh exit code${ctx}`);
    assertGreater(run.seconds, 0);
  },
});

const ARM64_TOOLS = [
  ["qemu-system-aarch64", "qemu-system-arm"],
  ["aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"],
  ["npm", "npm"],
];

Deno.test({
  name:
    "Debian 6.1 arm64 under qemu-system-aarch64: boot, validate, nginx on raw_tp and Apache with the right JA4H",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await requireTools(ARM64_TOOLS);
    const run = await runKernel("6.1", {
      arch: "arm64",
      requests: REQUESTS,
      // raw_tp: the method that depends most on the architecture (arm64's pt_regs, its syscall numbers).
      methods: ["raw_tp"],
      idle: 0,
      perfbuf: false,
      timeoutSeconds: 420,
    });
    const ctx = `\n--- run.sh --arch arm64 (${
      run.seconds.toFixed(0)
    } s, exit ${run.code}) ---\n${run.stdout}\n${run.stderr.slice(-2000)}`;
    const L = run.lines;
    assert(run.code !== 124, `the VM timed out${ctx}`);
    assert(one(L, "BOOT", "uptime"), `the guest never started its init${ctx}`);
    const info = one(L, "INFO", "kernel")?.fields;
    assert(info?.kernel.startsWith("6.1.") && info.kernel.endsWith("-arm64"), `not a 6.1 arm64 kernel${ctx}`);
    assertEquals(info?.arch, "aarch64", `uname -m in the guest${ctx}`);
    const sym = one(L, "CHECK", "symbol")?.fields;
    assertEquals([sym?.symbol, sym?.present], ["__arm64_sys_recvfrom", "1"], `arm64 syscall wrapper${ctx}`);
    const rt = one(L, "CHECK", "runtime")?.fields.runtime ?? "";
    assertMatch(rt, /aarch64-unknown-linux-gnu/, `the guest runs Deno's arm64 build${ctx}`);
    const v = one(L, "VALIDATE", "rc");
    assertEquals(v?.fields.rc, "0", `ja4ebpf --validate failed${ctx}`);
    const vj = JSON.parse(v!.fields.json);
    assertEquals([vj.ok, vj.arch], [true, "aarch64"], `--validate --json${ctx}`);
    // The attach plan found the arm64 wrapper itself (probed in kallsyms, not named after uname).
    assertEquals(vj.kallsyms.__arm64_sys_recvfrom, true, `validate probed __arm64_sys_recvfrom${ctx}`);
    for (const [server, hook] of [["nginx", "raw_tp"], ["apache", "uprobe"]]) {
      const m = L.find((l) =>
        l.kind === "METHOD" && l.fields.method === "raw_tp" && l.fields.server === server
      );
      assert(m && m.fields.attached === hook, `${server}: not attached through ${hook}${ctx}`);
      assertEquals(m.fields.rows, String(REQUESTS), `${server}: rows != requests${ctx}`);
      assertEquals(m.fields.right_ja4h, String(REQUESTS), `${server}: wrong JA4H${ctx}`);
    }
    assertEquals(one(L, "SUMMARY", "failures")?.fields.failures, "0", `the guest reported failures${ctx}`);
    assertEquals(run.code, 0, `run.sh exit code${ctx}`);
  },
});

Deno.test({
  name:
    "host kernel (no VM): auto captures both servers; a method the kernel lacks is refused with its errno",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await requireTools();
    const run = await runKernel("host", {
      requests: REQUESTS,
      methods: ["auto", "kretprobe"],
      idle: 0,
      perfbuf: false,
      timeoutSeconds: 50,
    });
    const ctx = `\n--- host.sh (${run.seconds.toFixed(0)} s, exit ${run.code}) ---\n${run.stdout}\n${
      run.stderr.slice(-2000)
    }`;
    const L = run.lines;
    assertEquals(one(L, "VALIDATE", "rc")?.fields.rc, "0", `ja4ebpf --validate failed${ctx}`);
    for (const server of ["nginx", "apache"]) {
      const m = L.find((l) =>
        l.kind === "METHOD" && l.fields.method === "auto" && l.fields.server === server
      );
      assert(m && m.fields.attached !== "0", `${server}: no method attached${ctx}`);
      assertEquals(m.fields.rows, String(REQUESTS), `${server}: rows != requests${ctx}`);
      assertEquals(m.fields.right_ja4h, String(REQUESTS), `${server}: wrong JA4H${ctx}`);
    }
    // kretprobe: attached where the kernel's build configuration has kprobes, else refused with an errno
    // (the host of this project). The expectation comes from that configuration, not from host.sh's run.
    const k = L.find((l) =>
      l.kind === "METHOD" && l.fields.method === "kretprobe" && l.fields.server === "nginx"
    );
    assert(k, `no kretprobe result for nginx${ctx}`);
    const kprobes = await requireFeature(
      "kprobe",
      k.fields.attached === "kretprobe",
      "nginx=kretprobe on the host",
    )
      .catch((e) => {
        throw new Error(`${e.message}${ctx}`);
      });
    if (kprobes) {
      assertEquals(k.fields.rows, String(REQUESTS), `kretprobe rows != requests${ctx}`);
    } else {
      assertEquals(k.fields.attached, "0", `another method attached in kretprobe's place${ctx}`);
      assertMatch(k.fields.refused ?? "", /\bE[A-Z]{2,}\b/, `kretprobe refused without an errno${ctx}`);
    }
    assertEquals(one(L, "SUMMARY", "failures")?.fields.failures, "0", `the checks reported failures${ctx}`);
    assertEquals(run.code, 0, `host.sh exit code${ctx}`);
  },
});
