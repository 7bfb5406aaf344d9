/**
 * Uprobes that follow a shared library across package upgrades: one set of (entry, return) probe pairs on
 * every copy of the library in use, keyed by device and inode. Used for libapr (apr_socket_recv) and libssl
 * (SSL_read, SSL_read_ex, SSL_do_handshake).
 *
 * An upgrade replaces the file at a path (new inode). Running processes keep mapping the old, now deleted,
 * file (nginx reload and Apache graceful restart fork new workers from the same master), so the old inode
 * keeps its probes while a traced process maps it; the new file at the path is probed at its own symbol
 * offsets, ready for the next fresh start. Also used for the servers' own files (HTTPS probe sites: see
 * tls_probes.ts), with a per-file `sites` resolver instead of fixed pairs. A deleted file never probed
 * (upgraded before the agent started) is reached through /proc/PID/map_files. A file nobody maps (and no
 * longer at a kept path) is detached.
 * One set of probes per inode: two would see every read twice.
 */
import { ElfFile, mappedFiles } from "../bpf/elf.ts";
import type { AttachHandle } from "../bpf/object.ts";
import { log } from "../log.ts";

/** [symbol, entry program, return program]: entry attached first (a return probe needs its stash). */
export type UprobePair = readonly [symbol: string, entry: string, ret: string];

export interface LibraryProbesOptions {
  /** Basename of the library files (matched against /proc/PID/maps), e.g. /^libssl\.so/. */
  library: RegExp;
  /** Probes per file. A symbol the file lacks is skipped (SSL_read_ex: OpenSSL ≥ 1.1.1); none found fails. */
  pairs?: readonly UprobePair[];
  /** Instead of `pairs`: the probe sites of one file (e.g. PLT stubs); none fails with `why`. */
  sites?: (elf: ElfFile) => { method?: string; sites: Site[]; why?: string };
  /** Attaches one program at a file offset. */
  attach(program: string, path: string, offset: number, retprobe: boolean): AttachHandle;
  /** The processes whose mappings count (read at every refresh). */
  pids(): Iterable<number>;
  /** Log messages; fields: library, inode, probes and `via` (the map_files path of a deleted file). */
  messages: { attached: string; reattached: string; detached: string; failed: string };
}

/** A probe pair at a file offset. */
export interface Site {
  symbol: string;
  entry: string;
  ret: string;
  offset: number;
}

interface Wanted {
  path: string;
  /** The path itself, or /proc/PID/map_files/RANGE for a deleted file. */
  attachPath: string;
}

const fileKey = (st: Deno.FileInfo) => `${st.dev}:${st.ino}`;

function statKey(path: string): string | undefined {
  try {
    return fileKey(Deno.statSync(path));
  } catch {
    return undefined;
  }
}

/** The uprobe pairs of one library, on every copy of it in use. */
export class LibraryProbes {
  /** Paths kept probed whatever file they name now (the next fresh start loads that file). */
  readonly paths = new Set<string>();
  /** "dev:inode" → path and links. */
  readonly #links = new Map<string, { path: string; links: AttachHandle[]; method?: string }>();
  /** Files whose attach failed: not retried every refresh. */
  readonly #failed = new Set<string>();
  #running?: Promise<void>;
  #closed = false;

  constructor(readonly opts: LibraryProbesOptions) {}

  /** Number of probed files. */
  get size(): number {
    return this.#links.size;
  }

  /** Paths of the probed files (a path once per file probed there). */
  libraries(): string[] {
    return [...this.#links.values()].map((g) => g.path);
  }

  /** Probed files: path, "dev:inode" and the method the `sites` resolver chose. */
  probed(): { key: string; path: string; method?: string }[] {
    return [...this.#links].map(([key, g]) => ({ key, path: g.path, method: g.method }));
  }

  /** Takes over links attached elsewhere (the attach plan's) for the file at `path`. */
  adopt(path: string, links: AttachHandle[]): void {
    this.paths.add(path);
    const key = statKey(path);
    if (key && !this.#links.has(key)) this.#links.set(key, { path, links });
    else for (const l of links) l.close(); // gone meanwhile, or probed already: refresh attaches to what is mapped
  }

  /** Serialized: two overlapping refreshes would probe a file twice. */
  refresh(): Promise<void> {
    this.#running ??= this.#refresh().finally(() => (this.#running = undefined));
    return this.#running;
  }

  /** Detaches everything; later refreshes do nothing. */
  close(): void {
    this.#closed = true;
    for (const { links } of this.#links.values()) for (const l of links) l.close();
    this.#links.clear();
  }

  /** The files to probe: those mapped by the processes, then those now at the kept paths. */
  wanted(): Map<string, Wanted> {
    const want = new Map<string, Wanted>();
    for (const m of mappedFiles(this.opts.pids(), this.opts.library)) {
      // Also when deleted: the file now at that path is what the server loads at its next fresh start.
      this.paths.add(m.path);
      const key = `${m.dev}:${m.inode}`;
      if (want.has(key)) continue;
      want.set(key, { path: m.path, attachPath: m.deleted ? `/proc/${m.pid}/map_files/${m.range}` : m.path });
    }
    for (const path of [...this.paths]) {
      const key = statKey(path);
      if (!key) {
        if (![...want.values()].some((w) => w.path === path)) this.paths.delete(path);
        continue;
      }
      if (!want.has(key)) want.set(key, { path, attachPath: path });
    }
    return want;
  }

  async #refresh(): Promise<void> {
    if (this.#closed) return;
    const msg = this.opts.messages;
    const want = this.wanted();
    for (const [key, { path, attachPath }] of want) {
      if (this.#closed) return; // closed while an attach was awaited: attach nothing more
      if (this.#links.has(key) || this.#failed.has(key)) continue;
      const replaced = [...this.#links.values()].some((g) => g.path === path);
      const fields = {
        library: path,
        inode: Number(key.split(":")[1]),
        ...(attachPath !== path ? { via: attachPath } : {}),
      };
      let links: AttachHandle[] = [];
      try {
        let method: string | undefined;
        ({ links, method } = await this.#attach(attachPath));
        // Replaced (or the process gone) between the symbol lookup and the attach: the next refresh probes
        // what is there then.
        if (statKey(attachPath) !== key || this.#closed) {
          for (const l of links) l.close();
          continue;
        }
        this.#links.set(key, { path, links, method });
        log.info(replaced ? msg.reattached : msg.attached, {
          ...fields,
          probes: links.length,
          ...(method ? { method } : {}),
        });
      } catch (e) {
        for (const l of links) l.close();
        // Only a file still there failed for real; a vanished one is simply not wanted next time.
        if (statKey(attachPath) === key) this.#failed.add(key);
        log.warn(msg.failed, { ...fields, error: e instanceof Error ? e.message : String(e) });
      }
    }
    for (const [key, g] of [...this.#links]) {
      if (want.has(key)) continue;
      for (const l of g.links) l.close();
      this.#links.delete(key);
      log.info(msg.detached, { library: g.path, inode: Number(key.split(":")[1]) });
    }
  }

  async #attach(path: string): Promise<{ links: AttachHandle[]; method?: string }> {
    const elf = await ElfFile.open(path);
    const links: AttachHandle[] = [];
    if (this.#closed) return { links }; // closed while the file was read
    const pairs = this.opts.pairs ?? [];
    const choice = this.opts.sites?.(elf) ?? {
      sites: pairs.flatMap(([symbol, entry, ret]) => {
        const sym = elf.findSymbol(symbol);
        return sym ? [{ symbol, entry, ret, offset: sym.offset }] : [];
      }),
      why: `none of ${pairs.map(([s]) => s).join(", ")} in ${path}`,
    };
    try {
      for (const { entry, ret, offset } of choice.sites) {
        links.push(this.opts.attach(entry, path, offset, false));
        links.push(this.opts.attach(ret, path, offset, true));
      }
    } catch (e) {
      for (const l of links) l.close();
      throw e;
    }
    if (!links.length) throw new Error(choice.why ?? `no probe site in ${path}`);
    return { links, method: choice.method };
  }
}
