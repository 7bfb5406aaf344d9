import { assert, assertEquals, assertMatch, assertRejects } from "../testing/asserts.ts";
import { setLogSink } from "../log.ts";
import { claimTc, PROBE_TC, TcHandleBusyError, tcQuery } from "../bpf/tc.ts";
import { keptSyns, loadPrograms, progIdOfFd } from "../../tests/helpers/bpf.ts";
import {
  ACK,
  CLIENT,
  frame,
  MSS_ONLY,
  OPTIONS_AT,
  PACKETS,
  PSH,
  SERVER,
  SYN,
} from "../../tests/helpers/frames.ts";
import { ListenPorts } from "../bpf/maps.ts";
import { u32Key } from "../bpf/object.ts";
import { PortState } from "../bpf/layout.gen.ts";
import { requireRoot, run, runOk } from "../../tests/helpers/proc.ts";
import { TcCapture } from "./tc_capture.ts";

/** Handles of this test's own (no agent's filters are touched). */
const H = 0x4a51, H_AUTO = 0x4a52, H_ABORT = 0x4a53;

const filterOn = (iface: string, handle: number) => tcQuery(iface, { handle, priority: handle });

/**
 * A veth pair, both ends up, in the root namespace (where the agent's auto interfaces are listed); `name` is
 * one end. (This kernel has no dummy interfaces.)
 */
async function iface(name: string): Promise<AsyncDisposable & { name: string; remove(): Promise<void> }> {
  await run(["ip", "link", "del", name]);
  await runOk(["ip", "link", "add", name, "type", "veth", "peer", "name", `${name}p`]);
  await runOk(["ip", "link", "set", name, "up"]);
  await runOk(["ip", "link", "set", `${name}p`, "up"]);
  const remove = async () => void await run(["ip", "link", "del", name]);
  return { name, remove, [Symbol.asyncDispose]: remove };
}

/** An agent that attached its filter and was SIGKILLed: the filter stays (classic tc filters do). */
async function killedAgentFilter(iface: string, handle: number): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-tckill-" });
  try {
    await Deno.writeTextFile(
      `${dir}/attach.ts`,
      `import { loadPrograms } from ${
        JSON.stringify(new URL("../../tests/helpers/bpf.ts", import.meta.url).href)
      };
const obj = loadPrograms(["tc_ingress"]);
obj.program("tc_ingress").attachTc({ iface: ${
        JSON.stringify(iface)
      }, handle: ${handle}, priority: ${handle} });
console.log("attached");
setTimeout(() => {}, 60_000);
`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${dir}/attach.ts`],
      stdout: "piped",
    })
      .spawn();
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel();
    assertMatch(new TextDecoder().decode(value), /attached/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("TcCapture: claim and sweep, a filter per interface, interfaces that come and go, detach on close", async (t) => {
  requireRoot("tc filters");
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  const obj = loadPrograms(["tc_ingress"]);
  const prog = obj.program("tc_ingress");
  const progId = progIdOfFd(prog.fd);
  await using a = await iface("j4tccapa");
  const fixed = new TcCapture({ handle: H, interfaces: [a.name, "j4tcnone"] });
  try {
    await t.step("claim sweeps the filter a killed agent left with our handle", async () => {
      await killedAgentFilter(a.name, H);
      assert(filterOn(a.name, H) !== undefined, "the killed agent's filter stays");
      await fixed.claim();
      assertEquals(filterOn(a.name, H), undefined);
      assert(
        lines.some((l) =>
          l.includes(`removed tc filters left by an agent`) && l.includes(`${a.name}:0x4a51`)
        ),
      );
    });

    await t.step("a second claim of the same handle is refused; the probe's handle is reserved", async () => {
      await assertRejects(() => new TcCapture({ handle: H, interfaces: [] }).claim(), TcHandleBusyError);
      await assertRejects(
        () => new TcCapture({ handle: PROBE_TC.handle, interfaces: [] }).claim(),
        Error,
        "reserved",
      );
    });

    await t.step("nothing attached before enable()", async () => {
      await fixed.refresh();
      assertEquals([fixed.interfaces, filterOn(a.name, H)], [[], undefined]);
    });

    await t.step(
      "configured interfaces: our program on each; one that does not exist is logged and skipped",
      async () => {
        fixed.enable(prog);
        await fixed.refresh();
        assertEquals(fixed.interfaces, [a.name]);
        assertEquals(filterOn(a.name, H), progId);
        assertEquals(filterOn("lo", H), undefined, "only where configured");
        assert(lines.some((l) => /tc attach failed .*j4tcnone/.test(l)), lines.join("\n"));
      },
    );

    await t.step(
      "auto: an interface that comes up later gets the filter, one that goes away is forgotten",
      async () => {
        const auto = new TcCapture({ handle: H_AUTO, interfaces: ["auto"] });
        auto.enable(prog);
        try {
          await auto.refresh();
          assert(
            auto.interfaces.includes("lo") && auto.interfaces.includes(a.name),
            auto.interfaces.join(","),
          );
          const b = await iface("j4tccapb");
          try {
            await auto.refresh();
            assert(auto.interfaces.includes(b.name), auto.interfaces.join(","));
            assertEquals(filterOn(b.name, H_AUTO), progId);
          } finally {
            await b.remove();
          }
          await auto.refresh();
          assert(!auto.interfaces.includes(b.name), auto.interfaces.join(","));
          assert(auto.interfaces.includes(a.name));
        } finally {
          auto.close();
        }
        assertEquals([filterOn(a.name, H_AUTO), filterOn("lo", H_AUTO)], [undefined, undefined]);
      },
    );

    await t.step(
      "close() removes our filters; a refresh after it attaches nothing; release() frees the handle",
      async () => {
        fixed.close();
        assertEquals([fixed.interfaces, filterOn(a.name, H)], [[], undefined]);
        await fixed.refresh();
        assertEquals([fixed.interfaces, filterOn(a.name, H)], [[], undefined]);
        fixed.release();
        claimTc({ handle: H, priority: H }).release();
      },
    );

    await t.step("a stop while another agent probes: claim() ends with the stop's reason", async () => {
      const other = claimTc(PROBE_TC); // another agent's start-up probe, held
      const ac = new AbortController();
      const tc = new TcCapture({ handle: H_ABORT, interfaces: [a.name], signal: ac.signal });
      try {
        const t0 = performance.now();
        setTimeout(() => ac.abort(new Error("stopped")), 250);
        await assertRejects(() => tc.claim(), Error, "stopped");
        assert(performance.now() - t0 < 2000, "not the whole 5 s wait for the probe's claim");
      } finally {
        other.release();
        tc.release();
      }
    });

    await t.step("a stop during a refresh: nothing attached after it", async () => {
      const ac = new AbortController();
      const tc = new TcCapture({ handle: H_ABORT, interfaces: ["auto"], signal: ac.signal });
      tc.enable(prog);
      const p = tc.refresh(); // lists interfaces asynchronously
      ac.abort(new Error("stopped"));
      await p;
      assertEquals([tc.interfaces, filterOn("lo", H_ABORT)], [[], undefined]);
    });
  } finally {
    setLogSink(prev);
    fixed.close();
    fixed.release();
    obj.close();
  }
});

Deno.test("tc_ingress on frames (BPF_PROG_TEST_RUN): a watched port's SYN is kept, a plain connection's flow ends at its first byte, other packets leave nothing", async (t) => {
  requireRoot("loading BPF programs");
  using obj = loadPrograms(["tc_ingress"]);
  const prog = obj.program("tc_ingress"), flows = obj.map("flows");
  ListenPorts.of(obj.map("listen_ports"))!.add(SERVER);
  const UNSPEC = 0xffffffff; // TC_ACT_UNSPEC (-1): tc_ingress only observes
  const flowCount = () => [...flows.keys()].length;
  await t.step("packets before any SYN: nothing kept", () => {
    for (const [kind, pkt] of PACKETS.filter(([k]) => !k.startsWith("SYN"))) {
      assertEquals(prog.testRun(pkt).retval, UNSPEC, kind);
    }
    assertEquals([keptSyns(obj).length, flowCount()], [0, 0]);
  });
  await t.step("a SYN to an unwatched port: nothing kept", () => {
    prog.testRun(frame(CLIENT, 9999, SYN, 0, MSS_ONLY));
    assertEquals([keptSyns(obj).length, flowCount()], [0, 0]);
  });
  await t.step("the SYN: its facts for the first read, a flow for its first bytes", () => {
    const [, syn] = PACKETS.find(([k]) => k.startsWith("SYN"))!;
    assertEquals(prog.testRun(syn).retval, UNSPEC);
    const kept = keptSyns(obj);
    assertEquals(kept.map((s) => [s.srcAddr, s.srcPort, s.dstAddr, s.dstPort, s.window]), [[
      "127.0.0.2",
      CLIENT,
      "127.0.0.1",
      SERVER,
      65535,
    ]]);
    assertEquals([...kept[0].options], [...syn.subarray(OPTIONS_AT, OPTIONS_AT + kept[0].options.length)]);
    assertEquals(kept[0].options.length, 20);
    assertEquals(flowCount(), 1);
  });
  const state = () => obj.map("listen_ports").lookup(u32Key(SERVER))?.[0];
  await t.step("its first byte is plain text: the flow ends (no event: nothing to fingerprint)", () => {
    prog.testRun(frame(CLIENT, SERVER, ACK | PSH, 80, [], 1001)); // seq = ISN + 1: stream offset 0
    assertEquals(flowCount(), 0);
    assertEquals(keptSyns(obj).length, 1, "the SYN's facts stay for the server's first read");
    assertEquals(state(), PortState.WATCHED + 1, "one plain connection in a row counted");
  });
  await t.step(`after ${PortState.PLAIN_AFTER} plain connections in a row: SYNs kept, no flow made`, () => {
    for (let i = 1; state() !== PortState.PLAIN && i < 100; i++) {
      prog.testRun(frame(CLIENT + i, SERVER, SYN, 0, MSS_ONLY));
      assertEquals(flowCount(), 1, `connection ${i}: followed while the port is not plain yet`);
      prog.testRun(frame(CLIENT + i, SERVER, ACK | PSH, 80, [], 1001));
      assertEquals(flowCount(), 0);
    }
    assertEquals(state(), PortState.PLAIN);
    assert(ListenPorts.of(obj.map("listen_ports"))!.has(SERVER), "still watched");
    const before = keptSyns(obj).length;
    prog.testRun(frame(CLIENT + 200, SERVER, SYN, 0, MSS_ONLY));
    assertEquals(keptSyns(obj).length, before + 1, "its SYN's facts kept");
    assertEquals(flowCount(), 0, "no flow");
  });
  await t.step(
    "made watched again (user space's add): SYNs make flows; a TLS first byte resets the count",
    () => {
      ListenPorts.of(obj.map("listen_ports"))!.add(SERVER);
      for (const [port, first] of [[CLIENT + 300, 0x47], [CLIENT + 301, 0x16]]) {
        prog.testRun(frame(port, SERVER, SYN, 0, MSS_ONLY));
        assertEquals(flowCount(), 1);
        const data = frame(port, SERVER, ACK | PSH, 60, [], 1001);
        data.set(first === 0x16 ? [0x16, 0x03, 0x01, 0x02, 0x00] : [first], OPTIONS_AT); // "G…" / a 512-byte record
        prog.testRun(data);
      }
      assertEquals(flowCount(), 1, "the TLS connection followed on to the end of its first record");
      assertEquals(state(), PortState.WATCHED, "the plain one counted, the TLS one started the count over");
    },
  );
});
