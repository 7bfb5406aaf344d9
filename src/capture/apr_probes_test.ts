import { assert, assertEquals } from "../testing/asserts.ts";
import { setLogSink } from "../log.ts";
import { probeLibapr } from "../bpf/probes.ts";
import type { BpfObject } from "../bpf/object.ts";
import { libraryUser, loadPrograms, uprobeLinks } from "../../tests/helpers/bpf.ts";
import { APR_PROGRAMS, AprProbes, type AprProbesOptions, programsOf } from "./apr_probes.ts";

const LIBAPR = "/usr/lib/x86_64-linux-gnu/libapr-1.so.0";
const ENTRY = APR_PROGRAMS[0][1];

const waitFor = async (what: string, cond: () => boolean, ms = 5000) => {
  for (const end = Date.now() + ms; !cond();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("AprProbes: retries until libapr shows up, one at a time, bounded; nothing attached after close()", async (t) => {
  const obj: BpfObject = loadPrograms(programsOf(APR_PROGRAMS));
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-apr-" });
  const path = `${dir}/libapr-1.so.0`;
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  let attaches = 0;
  /**
   * The real locator (libapr at `path`), watched: how many run at once, a hook into each call, and an
   * optional delay before it (a busy host scanning /proc).
   */
  let inFlight = 0, maxInFlight = 0, onLocate = () => {}, locateDelayMs = 0;
  const probes = (o: Partial<AprProbesOptions> = {}) =>
    new AprProbes({
      attach: (prog, file, offset, retprobe) => {
        attaches++;
        return obj.program(prog).attachUprobe({ path: file, offset, retprobe });
      },
      pids: () => [],
      maxRetries: 30,
      retryIntervalSec: 0.02,
      locate: async () => {
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        onLocate();
        try {
          if (locateDelayMs) await sleep(locateDelayMs);
          return await probeLibapr(path);
        } finally {
          inFlight--;
        }
      },
      ...o,
    });
  const reset = () => {
    attaches = 0, maxInFlight = 0, onLocate = () => {}, locateDelayMs = 0;
    lines.length = 0;
  };
  try {
    await t.step(
      "libapr there after a few retries: attached by the next one, then no more retries",
      async () => {
        reset();
        let attachedTo = "";
        const apr = probes({ onRetryAttached: (lib) => attachedTo = lib });
        try {
          apr.scheduleRetry();
          await waitFor("three retries", () => apr.retries >= 3);
          assertEquals([apr.size, attaches], [0, 0]);
          await Deno.copyFile(Deno.realPathSync(LIBAPR), path);
          await waitFor("the attach", () => apr.size === 1);
          assertEquals([attachedTo, apr.retrying], [path, false]);
          assertEquals(uprobeLinks(obj.program(ENTRY).fd).map((u) => u.file), [path]);
          assert(
            lines.some((l) => /apache uprobes attached after retry .*attempt=\d+/.test(l)),
            lines.join("\n"),
          );
          const n = apr.retries;
          await sleep(150);
          assertEquals(apr.retries, n, "no retry after the attach");
        } finally {
          apr.close();
        }
        assertEquals(uprobeLinks(obj.program(ENTRY).fd), [], "close() detached them");
        await Deno.remove(path);
      },
    );

    await t.step("never there: gives up after max_retries, once", async () => {
      reset();
      const apr = probes({ maxRetries: 4 });
      try {
        apr.scheduleRetry();
        await waitFor("giving up", () => !apr.retrying);
        await sleep(100);
        assertEquals(apr.retries, 4);
        assertEquals(
          lines.filter((l) => /giving up on uprobes .*retries=4/.test(l)).length,
          1,
          lines.join("\n"),
        );
      } finally {
        apr.close();
      }
    });

    await t.step(
      "a retry slower than the interval: the next one waits for it (never two at once)",
      async () => {
        reset();
        // Each lookup takes 20 ms and finds an ELF file without apr_socket_recv; the interval is 1 ms.
        locateDelayMs = 20;
        await Deno.copyFile("/bin/sleep", path);
        const apr = probes({ maxRetries: 6, retryIntervalSec: 0.001 });
        try {
          apr.scheduleRetry();
          apr.scheduleRetry(); // a second call while retrying starts nothing more
          await waitFor("giving up", () => !apr.retrying);
          await sleep(60);
          assertEquals([apr.retries, maxInFlight], [6, 1]);
          assertEquals(lines.filter((l) => /giving up on uprobes/.test(l)).length, 1, lines.join("\n"));
        } finally {
          apr.close();
          await Deno.remove(path);
        }
      },
    );

    await t.step("close() while a retry looks for libapr: nothing attached, no retry after", async () => {
      reset();
      await Deno.copyFile(Deno.realPathSync(LIBAPR), path);
      const apr = probes();
      onLocate = () => apr.close();
      apr.scheduleRetry();
      await waitFor("the lookup", () => apr.retries === 1);
      await sleep(100);
      assertEquals([apr.retries, attaches, apr.size], [1, 0, 0]);
      assertEquals(uprobeLinks(obj.program(ENTRY).fd), []);
    });

    await t.step(
      "close() while a refresh attaches: the probes it was about to attach are not attached",
      async () => {
        reset();
        await using user = await libraryUser(path);
        const apr = probes({ pids: () => [user.pid] });
        const links = obj.program(ENTRY).attachUprobe({ path, funcName: "apr_socket_recv", retprobe: false });
        apr.adopt("/nonexistent/libapr-1.so.0", [links]); // the plan's links for a file gone meanwhile
        const p = apr.refresh();
        apr.close();
        await p;
        assertEquals([attaches, apr.size], [0, 0]);
        assertEquals(uprobeLinks(obj.program(ENTRY).fd), []);
      },
    );

    await t.step("adopt(): the plan's probes are kept, a refresh adds no second set", async () => {
      reset();
      await using user = await libraryUser(path);
      const apr = probes({ pids: () => [user.pid] });
      try {
        const links = APR_PROGRAMS.flatMap(([fn, entry, ret]) => [
          obj.program(entry).attachUprobe({ path, funcName: fn, retprobe: false }),
          obj.program(ret).attachUprobe({ path, funcName: fn, retprobe: true }),
        ]);
        apr.adopt(path, links);
        await apr.refresh();
        assertEquals([apr.size, attaches], [1, 0]);
        assertEquals(uprobeLinks(obj.program(ENTRY).fd).length, 1);
      } finally {
        apr.close();
      }
      assertEquals(uprobeLinks(obj.program(ENTRY).fd), []);
    });
  } finally {
    setLogSink(prev);
    obj.close();
    await Deno.remove(dir, { recursive: true });
  }
});
