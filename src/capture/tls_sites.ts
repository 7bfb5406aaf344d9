/**
 * Where the HTTPS plaintext probes go, per file. Every probe hit is a breakpoint trap (~19 µs on a small VM),
 * paid by every process that maps the probed file, so the probes go on the server's own code where it can:
 *
 * 1. `server_symbol`: nginx's exported `ngx_ssl_recv` (Debian/RHEL nginx is linked for dynamic modules), one
 *    entry + return per read event instead of two `SSL_read` pairs; or `SSL_*` defined in the server file
 *    itself (OpenSSL linked statically).
 * 2. `plt`: the PLT stubs through which the server file (nginx, Apache's mod_ssl.so) calls `SSL_read`,
 *    `SSL_do_handshake`, `SSL_accept` — same probes as on libssl, trapping only the server.
 * 3. `library`: the libssl file itself (the original design): every process mapping libssl traps, bystanders
 *    included. Chosen only for a server whose files give neither of the above.
 *
 * A probe on a file covers every process that maps it, forked workers from their first instruction: no
 * per-process attach and no gap for a new worker.
 */
import type { ElfFile } from "../bpf/elf.ts";
import { pltStubs } from "../bpf/plt.ts";
import { SSL_UPROBES } from "../bpf/plan.ts";

export type TlsMethod = "server_symbol" | "plt" | "library";

/** One probe: [function or stub name, entry program, return program] at a file offset. */
export interface TlsSite {
  symbol: string;
  entry: string;
  ret: string;
  offset: number;
}

/** The libssl functions and their programs (entry before return: a return probe needs its stash). */
export const SSL_FUNCTIONS: readonly (readonly [string, string, string])[] = SSL_UPROBES;
/** Called by servers through their PLT: mod_ssl's handshake is SSL_accept (libssl's own call inside is unseen). */
const PLT_FUNCTIONS: readonly (readonly [string, string, string])[] = [
  ...SSL_FUNCTIONS,
  ["SSL_accept", "up_ssl_hshake", "uret_ssl_hshake"],
];
export const NGX_SSL_RECV: readonly [string, string, string] = [
  "ngx_ssl_recv",
  "up_ngx_ssl_recv",
  "uret_ngx_ssl_recv",
];

/** Programs any site may use (loaded together). */
export const TLS_PROGRAMS: readonly string[] = [
  ...new Set([...PLT_FUNCTIONS, NGX_SSL_RECV].flatMap(([, e, r]) => [e, r])),
];

/** Basenames of the server files that may hold the sites (the executable, Apache's TLS module). */
export const SERVER_FILES = /^(nginx|mod_ssl\.so)$/;
/** Where Debian and RHEL install the server files (probed ahead of a server's start: only servers map them). */
export const INSTALLED_SERVER_FILES: Record<"nginx" | "apache", readonly string[]> = {
  nginx: ["/usr/sbin/nginx"],
  apache: ["/usr/lib/apache2/modules/mod_ssl.so", "/usr/lib64/httpd/modules/mod_ssl.so"],
};

/** The installed server files of the configured servers that exist here. */
export function installedServerFiles(servers: readonly string[]): string[] {
  return servers.flatMap((s) => INSTALLED_SERVER_FILES[s as "nginx" | "apache"] ?? []).filter((f) => {
    try {
      return Deno.statSync(f).isFile;
    } catch {
      return false;
    }
  });
}

/** libssl, the fallback. */
export const LIBSSL = /^libssl\.so/;

export interface SiteChoice {
  method?: TlsMethod;
  sites: TlsSite[];
  /** Why a cheaper method was not available (for a fallback's log line). */
  why?: string;
}

const site = ([symbol, entry, ret]: readonly [string, string, string], offset: number): TlsSite => ({
  symbol,
  entry,
  ret,
  offset,
});

/** Sites in a server's own file: nginx's ngx_ssl_recv, statically linked SSL_*, or the PLT stubs. */
export function serverSites(elf: ElfFile): SiteChoice {
  const ngx = elf.findSymbol(NGX_SSL_RECV[0]);
  if (ngx) return { method: "server_symbol", sites: [site(NGX_SSL_RECV, ngx.offset)] };
  const own = SSL_FUNCTIONS.flatMap((f) => {
    const s = elf.findSymbol(f[0]);
    return s ? [site(f, s.offset)] : [];
  });
  if (own.some((s) => s.symbol === "SSL_read")) return { method: "server_symbol", sites: own };
  const stubs = pltStubs(elf, PLT_FUNCTIONS.map(([f]) => f));
  if (stubs.has("SSL_read")) {
    return {
      method: "plt",
      sites: PLT_FUNCTIONS.flatMap((f) =>
        stubs.has(f[0]) ? [site([`${f[0]}@plt`, f[1], f[2]], stubs.get(f[0])!)] : []
      ),
    };
  }
  return { sites: [], why: `${elf.path}: no ngx_ssl_recv, no SSL_read and no SSL_read PLT stub` };
}

/** Sites on libssl itself (the fallback): every process that maps the file traps. */
export function librarySites(elf: ElfFile): SiteChoice {
  const sites = SSL_FUNCTIONS.flatMap((f) => {
    const s = elf.findSymbol(f[0]);
    return s ? [site(f, s.offset)] : [];
  });
  return sites.length
    ? { method: "library", sites }
    : { sites: [], why: `${elf.path}: none of ${SSL_FUNCTIONS.map(([f]) => f).join(", ")}` };
}
