import { assert, assertEquals, assertGreater, assertThrows } from "../testing/asserts.ts";
import { BpfError, libbpfWarnings } from "./ffi.ts";
import { configureLog, setLogSink } from "../log.ts";
import { BpfObject, probeRingbuf, u32Key } from "./object.ts";
import { probeTestObject, requireRoot } from "../../tests/fixtures/bpf/fixture.ts";
import { getppidTimes, loadedProgramNames } from "../../tests/fixtures/bpf/trigger.ts";

const OURS = ["pt_tp_getppid", "pt_rawtp_exit", "pt_uprobe", "pt_tc", "pt_fexit", "pt_kret"];

Deno.test("BpfObject: open, globals, load, attach, maps, detach, close", async (t) => {
  requireRoot();
  const bytes = await probeTestObject();
  await t.step("open_mem lists programs, maps and .rodata variables from BTF", () => {
    using o = BpfObject.openMem(bytes, "probe_test");
    assertEquals(o.programs().map((p) => p.name), OURS);
    assert(o.hasMap("rb") && o.hasMap("counters"));
    assertEquals(o.globals().map((g) => [g.name, g.size]), [["target_tgid", 4], ["output_mode", 4]]);
    assertThrows(() => o.setGlobals({ no_such_var: 1 }), BpfError, "no variable no_such_var");
    assertThrows(() => o.program("nope"), BpfError, "ENOENT");
    assertThrows(() => o.setRingSize("rb", 5000), BpfError, "power of two");
  });

  await t.step("a program the kernel refuses fails the whole load with its errno", () => {
    const o = BpfObject.openMem(bytes, "probe_test");
    try {
      const e = assertThrows(() => o.load(), BpfError) as BpfError;
      assertEquals(e.op, "bpf_object__load");
      assertEquals(e.errno, 1, "fentry/fexit are locked down on this kernel (EPERM)");
    } finally {
      o.close();
    }
  });

  await t.step("attach tracepoint, raw_tp, uprobe by name, tc; counters move; close detaches", async () => {
    const o = BpfObject.openMem(bytes, "probe_test");
    try {
      o.setGlobals({ target_tgid: Deno.pid, output_mode: 1 });
      o.setAutoload("pt_fexit", false);
      o.load();
      o.program("pt_tp_getppid").attachTracepoint("syscalls", "sys_enter_getppid");
      o.program("pt_rawtp_exit").attach();
      o.program("pt_uprobe").attachUprobe({ path: "libc.so.6", funcName: "getppid" });
      const tc = o.program("pt_tc").attachTc({ iface: "lo", handle: 0x7e57, priority: 0x7e57 });
      const kret = assertThrows(() => o.program("pt_kret").attach(), BpfError) as BpfError;
      assertEquals(kret.errno, 2, "kprobes are compiled out here (ENOENT)");
      getppidTimes(25);
      const c = o.map("counters");
      assertEquals(c.sumU64(u32Key(1)), 25n, "tracepoint hits");
      assertEquals(c.sumU64(u32Key(3)), 25n, "uprobe hits");
      assert(c.sumU64(u32Key(2)) >= 25n, "raw_tp sees every syscall of ours");
      // tc: a loopback TCP connect sends packets through lo ingress.
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port });
      conn.close();
      l.close();
      assertGreater(Number(c.sumU64(u32Key(4))), 0, "tc packets");
      tc.close();
      const before = c.sumU64(u32Key(4));
      const l2 = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      (await Deno.connect({ hostname: "127.0.0.1", port: (l2.addr as Deno.NetAddr).port })).close();
      l2.close();
      assertEquals(c.sumU64(u32Key(4)), before, "no tc packets after detach");
      // A plain hash map: update, lookup, keys, delete.
      const kv = o.map("kv");
      kv.update(u32Key(7), new Uint8Array(new BigUint64Array([42n]).buffer));
      assertEquals(kv.sumU64(u32Key(7)), 42n);
      assertEquals([...kv.keys()].length, 1);
      assert(kv.delete(u32Key(7)));
      assert(!kv.delete(u32Key(7)));
      assertEquals(kv.lookup(u32Key(7)), undefined);
      assert((await loadedProgramNames()).includes("pt_tp_getppid"), "bpftool sees the loaded program");
    } finally {
      o.close();
    }
    const left = (await loadedProgramNames()).filter((n) => OURS.includes(n));
    assertEquals(left, [], "after close, no program of ours remains");
  });

  await t.step(
    "tc on an interface that has clsact already: libbpf's extack notice is debug, not warn",
    () => {
      const lines: string[] = [];
      const prevSink = setLogSink((l) => lines.push(l));
      configureLog({ level: "debug", format: "plain" });
      const o = BpfObject.openMem(bytes, "probe_test");
      try {
        for (const p of o.programs()) p.autoload = p.name === "pt_tc";
        o.load();
        // The first attach creates clsact on lo unless something did before; the second finds it for sure.
        o.program("pt_tc").attachTc({ iface: "lo", handle: 0x7e58, priority: 0x7e58 }).close();
        o.program("pt_tc").attachTc({ iface: "lo", handle: 0x7e58, priority: 0x7e58 }).close();
      } finally {
        o.close();
        setLogSink(prevSink);
        configureLog({ level: "info" });
      }
      const excl = lines.filter((l) => l.includes("Exclusivity flag on"));
      assert(excl.length >= 1, `libbpf reported the existing clsact:\n${lines.join("\n")}`);
      assert(excl.every((l) => / DEBUG libbpf: /.test(l)), excl.join("\n"));
      assert(!libbpfWarnings.some((w) => w.includes("Exclusivity flag on")), "not kept as a warning");
    },
  );

  await t.step("ringbuf feature probe", () => {
    assert(probeRingbuf());
  });
});
