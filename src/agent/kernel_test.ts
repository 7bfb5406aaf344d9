import { assert, assertEquals, assertGreater, assertRejects } from "../testing/asserts.ts";
import { type Config, DEFAULT_CONFIG } from "../config/config.ts";
import { configureLog, setLogSink } from "../log.ts";
import { type CaptureEvent, decodeEvent } from "../bpf/events.ts";
import { claimTc, tcQuery } from "../bpf/tc.ts";
import { ServerFollower } from "../capture/follow.ts";
import { bpfProgIds } from "../../tests/helpers/agent.ts";
import { curl, wrk } from "../../tests/helpers/clients.ts";
import { requireRoot, waitUntil } from "../../tests/helpers/proc.ts";
import { startNginx } from "../../tests/helpers/servers.ts";
import { KernelCapture, onlineCpus, perfPagesPerCpu, ringSizeMb } from "./kernel.ts";

const NGINX = 23180;
/** This test's own tc handle (no agent's filter is touched). */
const HANDLE = 0x4a55;

Deno.test("perfPagesPerCpu spreads the configured buffer over the CPUs in powers of two", async (t) => {
  const cases: [number, number, number, number][] = [
    [16, 2, 4096, 2048],
    [16, 64, 4096, 64],
    [1, 128, 4096, 8],
    [24, 2, 4096, 2048],
  ];
  for (const [mb, cpus, page, want] of cases) {
    await t.step(`${mb} MiB on ${cpus} CPUs`, () => assertEquals(perfPagesPerCpu(mb, cpus, page), want));
  }
});

Deno.test("ringSizeMb: configured as is; 0 = 4 MiB per online CPU, a power of two in 8–64", async (t) => {
  for (
    const [cfg, cpus, want] of [[16, 2, 16], [3, 64, 3], [0, 1, 8], [0, 2, 8], [0, 3, 16], [0, 4, 16], [
      0,
      5,
      32,
    ], [
      0,
      16,
      64,
    ], [0, 512, 64]]
  ) {
    await t.step(`${cfg} MiB configured, ${cpus} CPUs`, () => assertEquals(ringSizeMb(cfg, cpus), want));
  }
  await t.step("online CPU lists", () => {
    assertEquals(onlineCpus("0-1\n"), 2);
    assertEquals(onlineCpus("0-3,6,8-9\n"), 7);
    assertEquals(onlineCpus("0\n"), 1);
    assert(onlineCpus() >= 1);
  });
});

/** nginx only, tc on loopback with our handle, a 1 MiB ring (easy to fill while nobody reads it). */
function testConfig(): Config {
  const cfg = structuredClone(DEFAULT_CONFIG) as Config;
  cfg.uprobes.servers = ["nginx"];
  cfg.capture.interfaces = ["lo"];
  cfg.capture.tc_handle = HANDLE;
  cfg.capture.ring_size_mb = 1;
  cfg.capture.ports = [NGINX];
  return cfg;
}

const ours = () => tcQuery("lo", { handle: HANDLE, priority: HANDLE });

Deno.test("KernelCapture: plan → load → probes → tc → reader on this kernel; drops read as deltas; close() leaves nothing", async (t) => {
  requireRoot("loading BPF programs");
  await using srv = await startNginx({ port: NGINX, workers: 1 });
  const follow = new ServerFollower(["nginx"], [NGINX]);
  const kc = new KernelCapture({ cfg: testConfig(), follow, signal: new AbortController().signal });
  const events: CaptureEvent[] = [];
  try {
    await t.step("attach: nginx's hook, its processes in the filter, our tc filter on lo", async () => {
      await kc.tc.claim();
      await kc.attach();
      const nginx = kc.plan.hooks.find((h) => h.hook === "nginx")!;
      assert(nginx.method, JSON.stringify(nginx.attempts));
      const { master, workers } = srv.pids();
      for (const pid of [master, ...workers]) assertEquals(follow.traced.get(pid), "nginx", `pid ${pid}`);
      const filter = ours();
      assert(filter !== undefined && bpfProgIds(Deno.pid).includes(filter), "our program on lo");
      const d = kc.describe();
      assertEquals([d.capture.includes(`nginx=${nginx.method}`), d.buffer, d.interfaces], [
        true,
        "ringbuf",
        "lo",
      ]);
    });

    await t.step(
      "nobody reading: the full ring's drops are reported once, as what grew since the last read",
      async () => {
        const read = () => {
          const got: Record<string, number> = {};
          kc.readDrops((reason, n) => got[reason] = (got[reason] ?? 0) + n);
          return got;
        };
        read(); // whatever was counted before
        const wakeups0 = kc.ringWakeups();
        // Until the 1 MiB ring overflows (a loaded machine may need more than one second of requests).
        const first: Record<string, number> = {};
        let requests = 0;
        for (let i = 0; i < 5 && !first.ringbuf; i++) {
          requests +=
            (await wrk({ url: `http://127.0.0.1:${NGINX}/`, connections: 4, duration: 1 })).requests;
          for (const [k, n] of Object.entries(read())) first[k] = (first[k] ?? 0) + n;
        }
        assertGreater(
          first.ringbuf ?? 0,
          0,
          `${requests} requests into a 1 MiB ring: ${JSON.stringify(first)}`,
        );
        // The reader is woken once per sixteenth of the ring a record crosses, not once per record past the
        // first sixteenth: filling the ring (thousands of records) is at most 16 wake-ups, a few more where
        // producers on two CPUs race past a mark.
        const wakeups = kc.ringWakeups() - wakeups0;
        assert(
          wakeups >= 1 && wakeups <= 24,
          `${wakeups} wake-ups filling a 1 MiB ring with ${requests} requests`,
        );
        // The ring is still full: the close events of wrk's last connections may be dropped a moment later.
        // Once nothing more is dropped a read reports nothing (a cumulative count would never get there).
        let again = read();
        for (let i = 0; i < 30 && again.ringbuf !== undefined; i++) {
          await new Promise((r) => setTimeout(r, 100));
          again = read();
        }
        assertEquals(again.ringbuf, undefined, "nothing new: nothing reported");
      },
    );

    await t.step(
      "startReader: a request to nginx arrives as its head (recvfrom) carrying its SYN (tc); each batch ends with onBatch",
      async () => {
        let batches = 0, lastBatchAt = -1;
        kc.startReader({
          onRecord: (rec) => {
            const e = decodeEvent(rec);
            if (e.dstPort === NGINX) events.push(e);
          },
          onBatch: () => (batches++, lastBatchAt = events.length),
        });
        const r = await curl(["-o", "/dev/null", `http://127.0.0.1:${NGINX}/kernel-capture`]);
        assertEquals(r.code, 0, r.stderr);
        const dec = new TextDecoder();
        await waitUntil(
          () =>
            events.some((e) =>
              e.type === "data" && dec.decode(e.bytes).startsWith("GET /kernel-capture ") &&
              e.syn !== undefined && e.syn.window > 0 && e.syn.options.length > 0
            ),
          5000,
          "the request's records",
        );
        await waitUntil(() => lastBatchAt === events.length, 5000, "the batch's end");
        assertGreater(batches, 0);
      },
    );

    await t.step("close(): every program and filter gone; release() frees the handle", async () => {
      await kc.close();
      assertEquals([bpfProgIds(Deno.pid), ours()], [[], undefined]);
      kc.release();
      claimTc({ handle: HANDLE, priority: HANDLE }).release();
    });
  } finally {
    await kc.close();
    kc.release();
  }
});

Deno.test("KernelCapture: a stop while attaching ends attach() with the stop's reason; close() leaves nothing", async (t) => {
  requireRoot("loading BPF programs");
  // Stopped when the plan is made (nothing loaded yet), and when the tc filter went on (object loaded).
  configureLog({ rateLimitMs: 0 }); // the earlier test logged the same lines within the window
  for (const point of [/hook attached/, /packet capture attached/]) {
    await t.step(`stop at ${point.source}`, async () => {
      const ac = new AbortController();
      const kc = new KernelCapture({
        cfg: testConfig(),
        follow: new ServerFollower(["nginx"], [NGINX]),
        signal: ac.signal,
      });
      const prev = setLogSink((line) => {
        prev(line);
        if (point.test(line)) ac.abort(new Error("stopped"));
      });
      try {
        await kc.tc.claim();
        await assertRejects(() => kc.attach(), Error, "stopped");
      } finally {
        setLogSink(prev);
        await kc.close();
        kc.release();
      }
      assertEquals([bpfProgIds(Deno.pid), ours()], [[], undefined]);
    });
  }
  configureLog({ rateLimitMs: 10_000 });
});
