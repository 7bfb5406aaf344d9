/**
 * The HTTPS plaintext probes of the running servers: on the servers' own files first (see tls_sites.ts), on
 * libssl only for a server whose files give no site (and then every process mapping that libssl traps; the
 * log says which server and why). Both kinds follow replaced files through LibraryProbes.
 */
import type { AttachHandle } from "../bpf/object.ts";
import { mappedFiles } from "../bpf/elf.ts";
import { LibraryProbes } from "./lib_probes.ts";
import { log } from "../log.ts";
import { librarySites, LIBSSL, SERVER_FILES, serverSites } from "./tls_sites.ts";

export interface TlsProbesOptions {
  /** "auto": server files first; "library": libssl for every server (the original design). */
  mode: "auto" | "library";
  attach(program: string, path: string, offset: number, retprobe: boolean): AttachHandle;
  /** The traced server processes. */
  pids(): Iterable<number>;
  /**
   * Server files probed even before a server maps them (the installed nginx, mod_ssl.so), so a server started
   * after the agent is covered from its first request; only processes mapping them trap.
   */
  preload?: readonly string[];
}

export class TlsProbes {
  readonly server: LibraryProbes;
  readonly library: LibraryProbes;
  /** Server processes on the libssl fallback (logged once each). */
  #fallback = new Set<number>();

  constructor(readonly opts: TlsProbesOptions) {
    this.server = new LibraryProbes({
      library: SERVER_FILES,
      sites: serverSites,
      attach: opts.attach,
      pids: () => opts.mode === "auto" ? opts.pids() : [],
      messages: {
        attached: "HTTPS plaintext capture attached",
        reattached: "HTTPS plaintext capture re-attached: the server file was replaced",
        detached: "HTTPS plaintext capture detached: no process maps this server file any more",
        failed: "HTTPS probes: no site in the server's own file (falling back to libssl)",
      },
    });
    this.library = new LibraryProbes({
      library: LIBSSL,
      sites: librarySites,
      attach: opts.attach,
      pids: () => this.#fallback,
      messages: {
        attached: "HTTPS plaintext capture attached to libssl: every process that maps it traps",
        reattached: "HTTPS plaintext capture re-attached: libssl was replaced",
        detached: "HTTPS plaintext capture detached: no process maps this libssl any more",
        failed: "SSL uprobe attach failed",
      },
    });
    if (opts.mode === "auto") { for (const f of opts.preload ?? []) this.server.paths.add(f); }
  }

  /** Server files first; then the servers none of whose files is probed go to libssl. */
  async refresh(): Promise<void> {
    await this.server.refresh();
    const probed = new Set(this.server.probed().map((p) => p.key));
    const now = new Set<number>();
    for (const pid of this.opts.pids()) {
      const own = mappedFiles([pid], SERVER_FILES);
      if (own.some((m) => probed.has(`${m.dev}:${m.inode}`))) continue;
      if (!mappedFiles([pid], LIBSSL).length) continue; // no TLS in this process
      now.add(pid);
      if (!this.#fallback.has(pid)) {
        log.warn(
          "HTTPS probes on libssl for this server: other processes that map libssl pay a trap per call",
          {
            pid,
            reason: this.opts.mode === "library"
              ? "uprobes.tls_probes is library"
              : own.length
              ? "no ngx_ssl_recv / SSL_read site in its files"
              : "no server file mapped",
          },
        );
      }
    }
    this.#fallback = now;
    await this.library.refresh();
  }

  get size(): number {
    return this.server.size + this.library.size;
  }

  /** "method:path" per probed file, for the ready line and --validate. */
  describe(): string[] {
    return [...this.server.probed(), ...this.library.probed()].map((p) =>
      `${p.method ?? "library"}:${p.path}`
    );
  }

  close(): void {
    this.server.close();
    this.library.close();
  }
}
