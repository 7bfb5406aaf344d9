import { assert, assertEquals, assertMatch, assertThrows } from "../testing/asserts.ts";
import {
  DEFAULT_HOOKS,
  type HookSpec,
  makePlan,
  openPlanned,
  planInputs,
  type PlannedObject,
  PROBE_TC_HANDLE,
  PROBE_TC_PRIORITY,
  probeTaskBtf,
  ringbufChosen,
  verifierTail,
} from "./plan.ts";
import { EAGAIN_ATTEMPTS, loadWithFallback } from "./load.ts";
import { parseConfig } from "../config/config.ts";
import { embeddedObject } from "./embedded.ts";
import { RODATA } from "./layout.gen.ts";
import { probeLibapr } from "./probes.ts";
import { u32Key } from "./object.ts";
import { probeTestObject, requireRoot } from "../../tests/fixtures/bpf/fixture.ts";
import { getppidTimes, loadedProgramNames } from "../../tests/fixtures/bpf/trigger.ts";

const auto = (program: string) => [{ program, attach: { kind: "auto" as const } }];

// The fixture's programs in the shape of the real hooks (same methods, same order).
const FIXTURE_HOOKS: HookSpec[] = [
  {
    hook: "nginx",
    methods: [
      { method: "tracepoint", variants: [auto("pt_tp_getppid")] },
      { method: "raw_tp", variants: [auto("pt_rawtp_exit")] },
      { method: "fexit", variants: [auto("pt_fexit")] },
      { method: "kretprobe", variants: [auto("pt_kret")] },
    ],
  },
  {
    hook: "apache",
    methods: [{
      method: "uprobe",
      variants: [[{
        program: "pt_uprobe",
        attach: { kind: "uprobe", library: "libapr", symbol: "apr_socket_recv", retprobe: false },
      }]],
    }],
  },
  {
    hook: "packets",
    methods: [{
      method: "tc",
      variants: [[{ program: "pt_tc", attach: { kind: "tc", direction: "ingress" } }]],
    }],
  },
];

Deno.test("plan: probes every method for real on this kernel", async (t) => {
  requireRoot();
  const bytes = await probeTestObject();
  const libapr = await probeLibapr();
  assert(libapr.offset !== undefined, `libapr located: ${libapr.error}`);

  await t.step("exhaustive auto: tracepoint chosen; fexit EPERM at load, kretprobe ENOENT at attach", () => {
    const plan = makePlan(bytes, { hooks: FIXTURE_HOOKS, libapr, exhaustive: true });
    const nginx = plan.hooks.find((h) => h.hook === "nginx")!;
    assertEquals(nginx.method, "tracepoint");
    const by = Object.fromEntries(nginx.attempts.map((a) => [a.method, a]));
    assertEquals([by.tracepoint.ok, by.raw_tp.ok, by.fexit.ok, by.kretprobe.ok], [true, true, false, false]);
    assertEquals([by.fexit.stage, by.fexit.errno], ["load", 1]);
    assertMatch(by.fexit.error!, /^EPERM: Operation not permitted/);
    assertEquals([by.kretprobe.stage, by.kretprobe.errno], ["attach", 2]);
    assertMatch(by.kretprobe.error!, /^ENOENT: No such file or directory/);
    assertEquals(plan.hooks.find((h) => h.hook === "apache")!.method, "uprobe");
    assertEquals(plan.hooks.find((h) => h.hook === "packets")!.method, "tc");
    assertEquals(plan.disabled, ["pt_fexit", "pt_kret", "pt_rawtp_exit"]);
  });

  await t.step("auto stops at the first method that works", () => {
    const plan = makePlan(bytes, { hooks: FIXTURE_HOOKS, libapr });
    assertEquals(plan.hooks[0].attempts.map((a) => a.method), ["tracepoint"]);
  });

  await t.step("forced methods: no fallback, the refusal is the reason", () => {
    const cases: [string, string | null, RegExp][] = [
      ["fexit", null, /fexit: EPERM/],
      ["kretprobe", null, /kretprobe: ENOENT/],
      ["raw_tp", "raw_tp", /^$/],
      ["bogus", null, /unknown method 'bogus'/],
      ["off", null, /disabled/],
    ];
    for (const [forced, method, reason] of cases) {
      const plan = makePlan(bytes, {
        hooks: FIXTURE_HOOKS,
        libapr,
        methods: { nginx: forced, apache: "off", packets: "off" },
      });
      assertEquals(plan.hooks[0].method, method, forced);
      assertMatch(plan.hooks[0].reason ?? "", reason);
    }
  });

  await t.step("a missing library is a precondition failure, not a crash", () => {
    const plan = makePlan(bytes, {
      hooks: FIXTURE_HOOKS,
      libapr: { path: null, symbol: "apr_socket_recv", error: "libapr-1.so.0 not found" },
      methods: { nginx: "off", packets: "off" },
    });
    assertEquals(plan.hooks[1].attempts[0].stage, "precondition");
    assertEquals(plan.hooks[1].reason, "uprobe: libapr-1.so.0 not found");
  });

  await t.step("openPlanned loads only the chosen programs; they fire; close leaves nothing", async () => {
    const plan = makePlan(bytes, { hooks: FIXTURE_HOOKS, libapr, methods: { packets: "off" } });
    const planned = openPlanned(bytes, plan, {}, { globals: { target_tgid: Deno.pid } });
    try {
      assertEquals(planned.links.length, 2);
      getppidTimes(10);
      assertEquals(planned.obj.map("counters").sumU64(u32Key(1)), 10n);
      const names = await loadedProgramNames();
      assert(names.includes("pt_tp_getppid") && !names.includes("pt_rawtp_exit"));
    } finally {
      planned.close();
    }
    assertEquals((await loadedProgramNames()).filter((n) => n.startsWith("pt_")), []);
  });

  await t.step("loadOnly: a uprobe the plan could not use is loaded, not attached, attachable later", () => {
    const plan = makePlan(bytes, {
      hooks: FIXTURE_HOOKS,
      libapr: { path: null, symbol: "apr_socket_recv", error: "libapr-1.so.0 not found" },
      methods: { packets: "off" },
    });
    assertEquals(plan.hooks[1].method, null);
    const planned = openPlanned(bytes, plan, {}, {
      globals: { target_tgid: Deno.pid },
      loadOnly: ["pt_uprobe"],
    });
    try {
      assertEquals([...planned.programLinks.keys()], ["pt_tp_getppid"]);
      assertEquals(planned.programLinks.get("pt_tp_getppid"), planned.links);
      const prog = planned.obj.program("pt_uprobe");
      assert(prog.fd >= 0, "loaded");
      prog.attachUprobe({ path: libapr.path!, offset: libapr.offset!, retprobe: false }).close();
    } finally {
      planned.close();
    }
  });
});

Deno.test("plan: the real object's kernel switches reach every probe load", async (t) => {
  requireRoot();
  const bytes = embeddedObject();
  const hooks = DEFAULT_HOOKS.filter((h) => h.hook !== "apache");
  const methods = {
    nginx: "tracepoint",
    packets: "tc",
    close: "tracepoint",
    follow: "tracepoint",
    listen: "tracepoint",
  };

  await t.step("probeTaskBtf: the helper exists on this kernel (6.18)", () => {
    assertEquals(probeTaskBtf(), true);
  });

  // Each case would be refused with EINVAL if a probe load kept the object's defaults: the perf buffer
  // with `use_ringbuf = 1` names the uncreated `events` map.
  const cases: [string, { ringbuf: boolean; taskBtf?: boolean }][] = [
    ["ring buffer, probed task BTF", { ringbuf: true }],
    ["perf buffer (events not created)", { ringbuf: false }],
    ["perf buffer, no task BTF (5.10's path)", { ringbuf: false, taskBtf: false }],
  ];
  for (const [name, sw] of cases) {
    await t.step(name, () => {
      const plan = makePlan(bytes, { hooks, methods, ...sw });
      for (const h of plan.hooks) {
        assertEquals([h.hook, h.method, h.reason], [
          h.hook,
          methods[h.hook as keyof typeof methods],
          undefined,
        ]);
      }
      assertEquals([plan.ringbuf, plan.taskBtf], [sw.ringbuf, sw.taskBtf ?? true]);
      using p = openPlanned(bytes, plan, {
        tcInterfaces: ["lo"],
        tcHandle: PROBE_TC_HANDLE + 1,
        tcPriority: PROBE_TC_PRIORITY + 1,
      });
      // The values the kernel got: the loaded (frozen) .rodata map, at the offsets of the generated layout.
      const rodata = p.obj.maps().find((m) => m.name.endsWith(RODATA.name))!;
      const v = rodata.lookup(u32Key(0))!;
      const f = RODATA.fields;
      assertEquals([v[f.use_ringbuf.offset], v[f.has_task_btf.offset]], [
        sw.ringbuf ? 1 : 0,
        sw.taskBtf === false ? 0 : 1,
      ]);
      assertEquals(new DataView(v.buffer).getUint32(f.self_tgid.offset, true), Deno.pid);
    });
  }
});

Deno.test("verifierTail: the refusal from libbpf's one-message verifier log", async (t) => {
  const cases: [string, string[], string | undefined][] = [
    ["no log", ["libbpf: prog 'x': BPF program load failed: Permission denied"], undefined],
    [
      "last lines, the insn count left out",
      [
        "libbpf: prog 'x': BPF program load failed: Permission denied",
        "libbpf: prog 'tc_ingress': -- BEGIN PROG LOAD LOG --\n0: (bf) r6 = r1\n1: (61) r1 = *(u32 *)(r6 +16)\n" +
        "R1 invalid mem access 'scalar'\nprocessed 2 insns (limit 1000000) max_states_per_insn 0\n" +
        "-- END PROG LOAD LOG --",
      ],
      "prog 'tc_ingress': 0: (bf) r6 = r1 | 1: (61) r1 = *(u32 *)(r6 +16) | R1 invalid mem access 'scalar'",
    ],
    [
      "a log clipped before its END marker",
      ["libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\na\nb\nc\nd\ne\n[…]\nf"],
      "prog 'p': d | e | […] | f",
    ],
  ];
  for (const [name, warnings, want] of cases) {
    await t.step(name, () => assertEquals(verifierTail(warnings), want));
  }
});

Deno.test("planInputs: what a configuration asks of the plan (run and --validate share it)", async (t) => {
  const libapr = {
    path: "/usr/lib/x86_64-linux-gnu/libapr-1.so.0",
    symbol: "apr_socket_recv",
    offset: 0x1234,
  };
  const host = { ringbuf: true, libapr, interfaces: ["eth0", "lo", "veth1"] };
  const saved = Deno.env.get("JA4EBPF_KRETPROBE_MAXACTIVE");
  Deno.env.delete("JA4EBPF_KRETPROBE_MAXACTIVE");
  try {
    const cases: [string, string, Record<string, string>, Record<string, string>, boolean][] = [
      // name, YAML, methods, why, libapr passed on
      ["defaults", "", { nginx: "auto", apache: "auto" }, {}, true],
      [
        "uprobes off: Apache can only be seen through read tracepoints",
        "uprobes:\n  enabled: false\n",
        { nginx: "auto", apache: "read_tracepoint" },
        { apache: "uprobes.enabled is false" },
        false,
      ],
      [
        "uprobes off but Apache forced: the forced method stays (and fails on libapr)",
        "uprobes:\n  enabled: false\ncapture:\n  apache: uprobe\n",
        { nginx: "auto", apache: "uprobe" },
        {},
        false,
      ],
      [
        "a server not listed is off, whatever its method",
        "uprobes:\n  servers: [nginx]\ncapture:\n  apache: read_tracepoint\n",
        { nginx: "auto", apache: "off" },
        { apache: "uprobes.servers does not list apache" },
        false,
      ],
      [
        "Apache only, nginx forced",
        "uprobes:\n  servers: [apache]\ncapture:\n  nginx: fexit\n",
        { nginx: "off", apache: "auto" },
        { nginx: "uprobes.servers does not list nginx" },
        true,
      ],
      [
        "forced methods pass through",
        "capture:\n  nginx: kretprobe\n",
        { nginx: "kretprobe", apache: "auto" },
        {},
        true,
      ],
    ];
    for (const [name, yaml, methods, why, withApr] of cases) {
      await t.step(name, () => {
        const pc = planInputs(parseConfig(yaml, "c.yaml"), host);
        assertEquals([pc.methods, pc.why], [methods, why]);
        assertEquals(pc.libapr, withApr ? libapr : undefined);
        assertEquals([pc.tcInterfaces, pc.ringbuf, pc.kretprobeMaxactive], [
          ["lo", "eth0", "veth1"],
          true,
          4096,
        ]);
      });
    }
    await t.step("kretprobe_maxactive from the config, unless the environment sets it", () => {
      const cfg = parseConfig("capture:\n  kretprobe_maxactive: 64\n", "c.yaml");
      assertEquals(planInputs(cfg, host).kretprobeMaxactive, 64);
      Deno.env.set("JA4EBPF_KRETPROBE_MAXACTIVE", "8");
      assertEquals(planInputs(cfg, host).kretprobeMaxactive, undefined);
    });
    await t.step("the channel: forced either way, else the kernel's answer", () => {
      const got = (["auto", "ringbuf", "perfbuf"] as const).flatMap((s) =>
        [true, false].map((k) => ringbufChosen(s, () => k))
      );
      assertEquals(got, [true, false, true, true, false, false]);
    });
  } finally {
    if (saved === undefined) Deno.env.delete("JA4EBPF_KRETPROBE_MAXACTIVE");
    else Deno.env.set("JA4EBPF_KRETPROBE_MAXACTIVE", saved);
  }
});

Deno.test("loadWithFallback: optional program sets the kernel refuses cost only their feature", async (t) => {
  requireRoot();
  const bytes = await probeTestObject();
  const plan = makePlan(bytes, { hooks: FIXTURE_HOOKS, methods: { apache: "off", packets: "off" } });
  const open = (loadOnly: string[]) =>
    openPlanned(bytes, plan, {}, { globals: { target_tgid: Deno.pid }, loadOnly });

  await t.step("both sets load: one object with both", () => {
    const r = loadWithFallback(open, { tls: ["pt_rawtp_exit"], apr: ["pt_uprobe"] });
    using _ = r.planned;
    assertEquals([r.tls, r.apr, r.errors], [true, true, {}]);
    assert(r.planned.obj.program("pt_rawtp_exit").fd >= 0 && r.planned.obj.program("pt_uprobe").fd >= 0);
  });

  await t.step("a refused set (fexit: EPERM here) is left out with its error; the other stays", () => {
    const r = loadWithFallback(open, { tls: ["pt_fexit"], apr: ["pt_uprobe"] });
    using _ = r.planned;
    assertEquals([r.tls, r.apr, r.errors.apr], [false, true, undefined]);
    assertMatch(r.errors.tls!, /EPERM/);
    assertEquals(r.planned.obj.program("pt_uprobe").fd >= 0, true);
  });

  await t.step("both refused: the plan alone; a set not wanted is never tried", () => {
    const tried: string[][] = [];
    const r = loadWithFallback((l) => (tried.push(l), open(l)), { tls: ["pt_fexit"], apr: [] });
    using _ = r.planned;
    assertEquals([r.tls, r.apr], [false, false]);
    assertEquals(tried, [["pt_fexit"], []]);
    assertEquals(r.planned.links.length, 1, "the plan's tracepoint is attached");
  });

  // The verifier's EAGAIN cannot be provoked on demand: a test double throws it.
  await t.step("EAGAIN is retried with the same set, then the set is given up", () => {
    let calls = 0;
    const flaky = (fails: number) => (l: string[]): PlannedObject => {
      if (++calls <= fails) throw new Error("bpf_object__load: EAGAIN: Resource temporarily unavailable");
      return open(l);
    };
    const ok = loadWithFallback(flaky(EAGAIN_ATTEMPTS - 1), { tls: ["pt_rawtp_exit"], apr: [] });
    ok.planned.close();
    assertEquals([ok.tls, calls], [true, EAGAIN_ATTEMPTS]);
    calls = 0;
    const gaveUp = loadWithFallback(flaky(EAGAIN_ATTEMPTS), { tls: ["pt_rawtp_exit"], apr: [] });
    gaveUp.planned.close();
    assertEquals([gaveUp.tls, calls], [false, EAGAIN_ATTEMPTS + 1]);
    assertMatch(gaveUp.errors.tls!, /EAGAIN/);
    calls = 0;
    assertThrows(() => loadWithFallback(flaky(99), { tls: [], apr: [] }), Error, "EAGAIN");
    assertEquals(calls, EAGAIN_ATTEMPTS, "the plan-only load is retried too, then its error is thrown");
  });
});
