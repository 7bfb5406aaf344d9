/**
 * The executable's (and its libraries') start-up pages handed back to the page cache.
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

/** A mapping that holds only its file's bytes: readable, never writable, of a file not replaced since. */
function readOnly(m: MapLine): boolean {
  return !m.deleted && m.perms[0] === "r" && m.perms[1] === "-";
}

/** A shared library's file name: libcrypto.so.3, libbpf.so.1.1.2, libelf-0.188.so, ld-linux-x86-64.so.2. */
const LIBRARY = /^\/.*\.so(\.[0-9.]+)?$/;

/**
 * What the agent hands back: the read-only mappings of its executable and of the shared libraries it
 * opened (libbpf and libelf run at start-up; libcrypto's start-up ran its initialisers, ~1 MiB of it, where
 * the agent uses one function).
 */
export function pageOutMappings(maps: MapLine[], exe: string): MapLine[] {
  return maps.filter((m) => (m.path === exe || LIBRARY.test(m.path)) && readOnly(m));
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

/**
 * Pages out this process's executable and shared libraries (read-only mappings, pageOutMappings); what it
 * still runs comes back on use.
 */
export function pageOutExecutable(exe: string = Deno.execPath()): PageOutResult {
  const maps = pageOutMappings(mapLines(Deno.readTextFileSync("/proc/self/maps")), exe);
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
