/**
 * The executable's start-up pages handed back to the page cache.
 *
 * The runtime is one ~100 MB file. Starting the agent — loading and transpiling its modules, planning and
 * probing the BPF hooks — runs code of it that a running agent never runs again, and each page of it that
 * ran stays in the agent's resident set: 44–57 MiB of file pages under load, of which the steady state
 * touches ~30 (docs/performance.md). MADV_PAGEOUT on the executable's read-only mappings at ready (and
 * after one and ten minutes) drops them; what the agent still runs faults back in from the page cache within
 * seconds (minor faults, once), and the rest stays out. Read-only and executable mappings only: they hold
 * nothing but the file's bytes. Pages another process maps too (a second Deno process on the host) are left
 * by the kernel.
 */
import { MADV_PAGEOUT, madvise } from "../bpf/ffi.ts";
import { type MapLine, mapLines } from "../bpf/elf.ts";

/** The mappings of `exe` that hold only its file's bytes: readable, never writable. */
export function readOnlyMappings(maps: MapLine[], exe: string): MapLine[] {
  return maps.filter((m) => m.path === exe && !m.deleted && m.perms[0] === "r" && m.perms[1] === "-");
}

export interface PageOutResult {
  /** Resident file pages before and after, KiB (RssFile of /proc/self/status). */
  fileKbBefore: number;
  fileKbAfter: number;
  mappings: number;
  /** The errno of the first refusal (EINVAL before Linux 5.4), 0 when every mapping was advised. */
  errno: number;
}

function rssFileKb(): number {
  return Number(/RssFile:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1] ?? 0);
}

/** Pages out this process's executable (read-only mappings); what it still runs comes back on use. */
export function pageOutExecutable(exe: string = Deno.execPath()): PageOutResult {
  const maps = readOnlyMappings(mapLines(Deno.readTextFileSync("/proc/self/maps")), exe);
  const fileKbBefore = rssFileKb();
  let err = 0;
  for (const m of maps) {
    const e = madvise(m.start, m.end - m.start, MADV_PAGEOUT);
    if (e) {
      err = e;
      break;
    }
  }
  return { fileKbBefore, fileKbAfter: rssFileKb(), mappings: maps.length, errno: err };
}
