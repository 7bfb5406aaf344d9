import { assert, assertEquals, assertGreater, assertMatch, assertThrows } from "../testing/asserts.ts";
import { BpfError, quietLibbpf } from "./ffi.ts";
import { BpfObject, Link, u32Key } from "./object.ts";
import { findLibrary, symbolOffset } from "./elf.ts";
import {
  attachKretprobeEvent,
  attachTracefsEvent,
  eventOwner,
  eventPid,
  findKprobeTracefs,
  KprobeEventLink,
  kretprobeMaxactive,
  MAXACTIVE_ENV,
  MaxactiveError,
  parseProbeEvents,
  parseProfile,
  perfEventOpenTracepoint,
  procStartTime,
  removeEvent,
  removeStaleEvents,
  staleEvents,
  writeEvents,
} from "./kprobe_events.ts";
import { probeTestObject, requireRoot } from "../../tests/fixtures/bpf/fixture.ts";
import { getppidTimes } from "../../tests/fixtures/bpf/trigger.ts";

Deno.test("kprobe_events: maxactive, event and profile parsing, stale events", async (t) => {
  await t.step("maxactive: explicit, environment, default, capped, refused", () => {
    const cases: [number | undefined, string | undefined, number][] = [
      [8, undefined, 8],
      [undefined, "1", 1],
      [undefined, " 64 ", 64],
      [undefined, "", 4096],
      [100000, undefined, 4096],
      [undefined, "99999", 4096],
    ];
    for (const [v, env, want] of cases) {
      assertEquals(kretprobeMaxactive(v, env), want, `${v} / ${env}`);
    }
    for (const bad of ["0", "-3", "1.5", "lots"]) {
      assertThrows(() => kretprobeMaxactive(undefined, bad), MaxactiveError, `'${bad}'`);
    }
    assertThrows(() => kretprobeMaxactive(0), MaxactiveError);
    const saved = Deno.env.get(MAXACTIVE_ENV);
    try {
      Deno.env.set(MAXACTIVE_ENV, "3");
      assertEquals(kretprobeMaxactive(), 3, "read from the environment");
      assertEquals(kretprobeMaxactive(9), 9, "an explicit value wins");
      Deno.env.delete(MAXACTIVE_ENV);
      assertEquals(kretprobeMaxactive(), 4096, "default: the kernel's ceiling");
    } finally {
      if (saved === undefined) Deno.env.delete(MAXACTIVE_ENV);
      else Deno.env.set(MAXACTIVE_ENV, saved);
    }
  });

  await t.step("kprobe_events lines", () => {
    const text = [
      "r4096:kprobes/ja4ebpf_4242_recvfrom __x64_sys_recvfrom",
      "p:kprobes/libbpf_77_do_sys_open_0x0 do_sys_open",
      "r:mygroup/ret_open do_sys_open $retval",
      "garbage",
      "",
    ].join("\n");
    assertEquals(parseProbeEvents(text), [
      {
        kind: "r",
        maxactive: 4096,
        group: "kprobes",
        event: "ja4ebpf_4242_recvfrom",
        target: "__x64_sys_recvfrom",
      },
      { kind: "p", group: "kprobes", event: "libbpf_77_do_sys_open_0x0", target: "do_sys_open" },
      { kind: "r", group: "mygroup", event: "ret_open", target: "do_sys_open" },
    ]);
  });

  await t.step("kprobe_profile columns: event, hits, misses", () => {
    const text = "  ja4ebpf_4242_recvfrom                                   120               37\n" +
      "  libbpf_77_do_sys_open_0x0                                 5                0\n  broken line\n";
    const p = parseProfile(text);
    assertEquals(p.get("ja4ebpf_4242_recvfrom"), { hits: 120, missed: 37 });
    assertEquals(p.get("libbpf_77_do_sys_open_0x0"), { hits: 5, missed: 0 });
    assertEquals(p.size, 2);
  });

  await t.step("stale: ours, of a dead pid or a reused one, never a live agent's nor another tool's", () => {
    assertEquals(eventPid("ja4ebpf_12_recvfrom"), 12);
    assertEquals(eventPid("ja4ebpf_12_recvfrom_2"), 12);
    assertEquals(eventPid("libbpf_12_recvfrom"), undefined);
    assertEquals(eventOwner("ja4ebpf_12_34567_recvfrom"), { pid: 12, start: "34567" });
    assertEquals(eventOwner("ja4ebpf_12_34567_recvfrom_2"), { pid: 12, start: "34567" });
    assertEquals(eventOwner("ja4ebpf_12_recvfrom"), { pid: 12 });
    const ev = (event: string) => ({ kind: "r" as const, group: "kprobes", event, target: "f" });
    const started: Record<number, string> = { 200: "5000", 300: "7000" };
    const all = [
      ev("ja4ebpf_100_4000_recvfrom"), // process gone
      ev("ja4ebpf_200_5000_recvfrom"), // live agent: same pid, same start
      ev("ja4ebpf_300_6000_recvfrom"), // pid 300 reused by a process started later
      ev("ja4ebpf_200_recvfrom"), // older version: left to the kernel (EBUSY while attached)
      ev("other_300_recvfrom"),
    ];
    assertEquals(staleEvents(all, (pid) => started[pid]).map((e) => e.event), [
      "ja4ebpf_100_4000_recvfrom",
      "ja4ebpf_300_6000_recvfrom",
      "ja4ebpf_200_recvfrom",
    ]);
    assertEquals(procStartTime(Deno.pid), procStartTime(Deno.pid), "stable");
    assertMatch(procStartTime(Deno.pid) ?? "", /^\d+$/);
    assertEquals(procStartTime(0x3fffffff), undefined, "no such process");
  });
});

/** tracefs with uprobe events, libc's path and getppid's offset in it. */
async function uprobeTarget(): Promise<{ tracefs: string; path: string; offset: number }> {
  const tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].find((p) => {
    try {
      return Deno.statSync(`${p}/uprobe_events`).isFile;
    } catch {
      return false;
    }
  });
  if (!tracefs) throw new Error("this test needs tracefs with uprobe_events (CONFIG_UPROBE_EVENTS)");
  const libc = await findLibrary("libc.so.6");
  if (!libc) throw new Error("libc.so.6 not found");
  return { tracefs, path: libc.path, offset: (await symbolOffset(libc.path, "getppid")).offset };
}

function eventExists(tracefs: string, group: string, event: string): boolean {
  try {
    Deno.statSync(`${tracefs}/events/${group}/${event}`);
    return true;
  } catch {
    return false;
  }
}

Deno.test("kprobe_events: events of dead agents and of reused pids are removed, a live agent's are kept", async () => {
  requireRoot();
  const { tracefs, path, offset } = await uprobeTarget();
  // A pid that surely is gone: a child that has exited.
  const child = new Deno.Command("true").spawn();
  await child.status;
  const init = procStartTime(1);
  assert(init, "pid 1's start time");
  const group = `ja4ebpf_stale_${Deno.pid}`;
  const dead = `ja4ebpf_${child.pid}_1_getppid`;
  // pid 1 is alive, but it is not the process that made these: its start time differs, or none is named.
  const reused = `ja4ebpf_1_${Number(init) + 1}_getppid`;
  const reusedOld = "ja4ebpf_1_getppid";
  // What a live agent (pid 1 with its own start time) holds: kept.
  const live = `ja4ebpf_1_${init}_getppid`;
  const all = [dead, reused, reusedOld, live];
  for (const ev of all) {
    writeEvents(tracefs, `p:${group}/${ev} ${path}:0x${offset.toString(16)}`, "uprobe_events");
  }
  try {
    assert(all.every((ev) => eventExists(tracefs, group, ev)), "all created");
    assertEquals(
      removeStaleEvents(tracefs, "uprobe_events").filter((e) => e.startsWith("ja4ebpf_")).sort(),
      [dead, reused, reusedOld].sort(),
    );
    assert(!eventExists(tracefs, group, dead), "the dead agent's event is gone");
    assert(!eventExists(tracefs, group, reused), "the event of a pid now used by another process is gone");
    assert(!eventExists(tracefs, group, reusedOld), "an older version's event not in use is gone");
    assert(eventExists(tracefs, group, live), "the live agent's event stays");
  } finally {
    for (const ev of all) removeEvent(tracefs, ev, group, "uprobe_events");
  }
  assert(!eventExists(tracefs, group, live), "removed by the test");
});

Deno.test("kprobe_events: a perf event on a tracefs probe event runs the program; close detaches", async () => {
  requireRoot();
  const { tracefs, path, offset } = await uprobeTarget();
  // A uprobe event stands in for a kprobe one (kprobes are not on every test kernel): the perf event,
  // the attach and the link's ownership of the fd are the same code.
  const group = `ja4ebpf_test_${Deno.pid}`;
  const write = (line: string) => {
    using f = Deno.openSync(`${tracefs}/uprobe_events`, { write: true, append: true });
    f.writeSync(new TextEncoder().encode(line + "\n"));
  };
  write(`p:${group}/getppid ${path}:0x${offset.toString(16)}`);
  const o = BpfObject.openMem(await probeTestObject(), "probe_test");
  try {
    for (const p of o.programs()) p.autoload = p.name === "pt_uprobe";
    o.setGlobals({ target_tgid: Deno.pid });
    o.load();
    const prog = o.program("pt_uprobe");
    const e = assertThrows(() => attachTracefsEvent(prog, tracefs, group, "nope"), BpfError) as BpfError;
    assertEquals(e.errno, 2, "no such event: ENOENT");
    assertThrows(() => perfEventOpenTracepoint(0x7fffffff), BpfError, "perf_event_open");
    const link = new Link(attachTracefsEvent(prog, tracefs, group, "getppid"), "test uprobe", "uprobe");
    o.track(link);
    getppidTimes(25);
    const c = o.map("counters");
    assertEquals(c.sumU64(u32Key(3)), 25n, "the program ran once per call");
    const profile = Deno.readTextFileSync(`${tracefs}/uprobe_profile`);
    assert(profile.includes("getppid"), "uprobe_profile lists the event");
    // The kernel refuses to remove an event in use: it goes only once the link closed the perf fd.
    assert(!removeEvent(tracefs, "getppid", group), "busy while attached");
    link.close();
    getppidTimes(5);
    assertEquals(c.sumU64(u32Key(3)), 25n, "no runs after close");
  } finally {
    o.close();
    // uprobe_events takes the same "-:" command as kprobe_events.
    try {
      write(`-:${group}/getppid`);
    } catch {
      // removed below or never created
    }
  }
  assert(!eventExists(tracefs, group, "getppid"), "event removed");
});

Deno.test("kprobe_events: kretprobe through kprobe_events, or libbpf's PMU kretprobe without it", async () => {
  requireRoot();
  const o = BpfObject.openMem(await probeTestObject(), "probe_test");
  try {
    for (const p of o.programs()) p.autoload = p.name === "pt_kret";
    o.load();
    const prog = o.program("pt_kret");
    const tracefs = findKprobeTracefs();
    if (!tracefs) {
      // No kprobe_events (kprobes compiled out, as on the development host): libbpf's attach is tried.
      const e = assertThrows(
        () => quietLibbpf(() => attachKretprobeEvent(prog, { syscall: "getppid", maxactive: 7 })),
        BpfError,
      ) as BpfError;
      assertEquals(e.op, "bpf_program__attach_ksyscall", "the fallback is libbpf's ksyscall");
      return;
    }
    const link = attachKretprobeEvent(prog, { syscall: "getppid", maxactive: 7 });
    assert(link instanceof KprobeEventLink);
    const line = parseProbeEvents(Deno.readTextFileSync(`${tracefs}/kprobe_events`))
      .find((e) => e.event === link.event);
    assertEquals(line?.maxactive, 7, "maxactive reached the kernel");
    assertEquals(eventPid(link.event), Deno.pid);
    getppidTimes(25);
    assertGreater(Number(o.map("counters").sumU64(u32Key(6))), 24, "kretprobe runs");
    assertGreater(link.hits() ?? 0, 24, "kprobe_profile hits");
    assertEquals(link.nmissed(), 0, "nothing pending: no misses");
    link.close();
    assertEquals(link.nmissed(), undefined);
    assert(!Deno.readTextFileSync(`${tracefs}/kprobe_events`).includes(link.event), "event removed on close");
  } finally {
    o.close();
  }
});
