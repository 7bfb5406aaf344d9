import { assert, assertEquals } from "../testing/asserts.ts";
import { setLogSink } from "../log.ts";
import type { BpfObject } from "../bpf/object.ts";
import { libraryUser, loadPrograms, uprobeLinks } from "../../tests/helpers/bpf.ts";
import { LibraryProbes, type UprobePair } from "./lib_probes.ts";

const LIBAPR = "/usr/lib/x86_64-linux-gnu/libapr-1.so.0";
const PAIRS: readonly UprobePair[] = [
  ["apr_socket_recv", "uprobe_apr_socket_recv_entry", "uretprobe_apr_socket_recv"],
];
const MESSAGES = { attached: "attached", reattached: "reattached", detached: "detached", failed: "failed" };

/** What the kernel has attached for the entry program: file → number of probes. */
function kernelProbes(obj: BpfObject): Record<string, number> {
  const out: Record<string, number> = {};
  for (const u of uprobeLinks(obj.program(PAIRS[0][1]).fd)) out[u.file] = (out[u.file] ?? 0) + 1;
  return out;
}

/** A new copy of libapr put at `path` by rename: a package upgrade (new inode, old one kept by its users). */
async function upgrade(path: string): Promise<void> {
  await Deno.copyFile(Deno.realPathSync(LIBAPR), `${path}.new`);
  await Deno.rename(`${path}.new`, path);
}

Deno.test("LibraryProbes: one probe set per inode in use, following a replaced library; closed means detached", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-libprobes-" });
  const path = `${dir}/libapr-1.so.0`;
  await upgrade(path);
  const obj = loadPrograms(PAIRS.flatMap(([, e, r]) => [e, r]));
  const logs: string[] = [];
  const prevSink = setLogSink((l) => logs.push(l));
  const pids: number[] = [];
  let attaches = 0;
  const probes = () =>
    new LibraryProbes({
      library: /^libapr-1\.so/,
      pairs: PAIRS,
      attach: (prog, file, offset, retprobe) => {
        attaches++;
        return obj.program(prog).attachUprobe({ path: file, offset, retprobe });
      },
      pids: () => pids,
      messages: MESSAGES,
    });
  const lp = probes();
  const a = await libraryUser(path), b = await libraryUser(path);
  try {
    await t.step("two processes mapping one file: one probe pair, on that file", async () => {
      pids.push(a.pid, b.pid);
      await lp.refresh();
      assertEquals(lp.size, 1);
      assertEquals(lp.libraries(), [path]);
      assertEquals(kernelProbes(obj), { [path]: 1 });
      assertEquals(uprobeLinks(obj.program(PAIRS[0][2]).fd).map((u) => u.retprobe), [true]);
    });

    await t.step("a refresh with nothing changed attaches nothing", async () => {
      const before = attaches;
      await lp.refresh();
      assertEquals([attaches - before, lp.size], [0, 1]);
    });

    await t.step(
      "the file replaced: the new one probed too, the old kept while processes map it",
      async () => {
        await upgrade(path);
        await lp.refresh();
        assertEquals(lp.size, 2);
        assert(logs.some((l) => /reattached/.test(l)), logs.join("\n"));
        // The kernel names each probe by the path it was attached through: both inodes were reached by it.
        assertEquals(kernelProbes(obj), { [path]: 2 });
      },
    );

    await t.step("a deleted file never probed is reached through /proc/PID/map_files", async () => {
      const fresh = probes();
      try {
        const want = [...fresh.wanted().values()];
        assert(want.some((w) => w.attachPath.startsWith(`/proc/${a.pid}/map_files/`)), JSON.stringify(want));
        await fresh.refresh();
        assertEquals(fresh.size, 2, "the deleted inode and the file now at the path");
        const files = Object.keys(kernelProbes(obj));
        assert(files.some((f) => f.startsWith(`/proc/${a.pid}/map_files/`)), files.join(" "));
      } finally {
        fresh.close();
      }
      assertEquals(lp.size, 2, "the other instance's probes are its own");
    });

    await t.step("its processes gone: the old inode detached, the file at the path kept", async () => {
      await a.kill();
      await b.kill();
      pids.length = 0;
      await lp.refresh();
      assertEquals([lp.size, lp.libraries()], [1, [path]]);
      assertEquals(kernelProbes(obj), { [path]: 1 });
      assert(logs.some((l) => /detached/.test(l)));
    });

    await t.step("close() while a refresh reads the file: nothing attached", async () => {
      const racing = probes();
      racing.paths.add(path);
      const before = attaches;
      const p = racing.refresh();
      racing.close();
      await p;
      assertEquals([attaches - before, racing.size], [0, 0]);
      assertEquals(kernelProbes(obj), { [path]: 1 }, "lp's own set only");
    });

    await t.step("close() detaches everything; a refresh after it attaches nothing", async () => {
      lp.close();
      assertEquals([lp.size, kernelProbes(obj)], [0, {}]);
      const before = attaches;
      await lp.refresh();
      assertEquals([attaches - before, lp.size, kernelProbes(obj)], [0, 0, {}]);
    });
  } finally {
    setLogSink(prevSink);
    await a.kill();
    await b.kill();
    lp.close();
    obj.close();
    await Deno.remove(dir, { recursive: true });
  }
});
