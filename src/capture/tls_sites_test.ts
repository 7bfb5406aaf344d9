/**
 * Probe sites read from the real Debian binaries, checked against binutils (objdump's `<SSL_read@plt>`, nm's
 * `ngx_ssl_recv`), and the fallback when a file gives none. Needs nginx, apache2 (mod_ssl), binutils.
 */
import { assert, assertEquals } from "../testing/asserts.ts";
import { ElfFile } from "../bpf/elf.ts";
import { pltStubs } from "../bpf/plt.ts";
import { librarySites, serverSites } from "./tls_sites.ts";

const NGINX = "/usr/sbin/nginx";
const MOD_SSL = "/usr/lib/apache2/modules/mod_ssl.so";

async function tool(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

/** Virtual address → file offset per readelf's LOAD table. */
async function fileOffset(path: string, vaddr: number): Promise<number> {
  for (const l of (await tool("readelf", ["-lW", path])).split("\n")) {
    const m = l.match(/^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)/);
    if (!m) continue;
    const [off, va, filesz] = [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
    if (vaddr >= va && vaddr < va + filesz) return vaddr - va + off;
  }
  throw new Error(`0x${vaddr.toString(16)} in no LOAD segment of ${path}`);
}

/** objdump's address of `<name@plt>`. */
async function objdumpPlt(path: string, name: string): Promise<number> {
  const m = new RegExp(`^([0-9a-f]+) <${name}@plt>:`, "m").exec(await tool("objdump", ["-d", path]));
  if (!m) throw new Error(`objdump: no ${name}@plt in ${path}`);
  return await fileOffset(path, parseInt(m[1], 16));
}

Deno.test("PLT stubs of mod_ssl.so and nginx match objdump", async () => {
  const mod = await ElfFile.open(MOD_SSL);
  const stubs = pltStubs(mod, ["SSL_read", "SSL_accept", "SSL_do_handshake", "SSL_read_ex", "no_such"]);
  for (const fn of ["SSL_read", "SSL_accept", "SSL_do_handshake"]) {
    assertEquals(stubs.get(fn), await objdumpPlt(MOD_SSL, fn), `${fn}@plt`);
  }
  assert(!stubs.has("SSL_read_ex") && !stubs.has("no_such"), "only imported functions");
  const ng = pltStubs(await ElfFile.open(NGINX), ["SSL_read"]);
  assertEquals(ng.get("SSL_read"), await objdumpPlt(NGINX, "SSL_read"));
});

Deno.test("server sites: nginx's ngx_ssl_recv, mod_ssl's PLT stubs; libssl as the fallback", async () => {
  const nginx = serverSites(await ElfFile.open(NGINX));
  assertEquals(nginx.method, "server_symbol");
  const nm = (await tool("nm", ["-D", "--defined-only", NGINX])).split("\n")
    .find((l) => l.endsWith(" ngx_ssl_recv"));
  assert(nm, "nm lists ngx_ssl_recv");
  assertEquals(nginx.sites.map((s) => [s.symbol, s.entry, s.ret]), [[
    "ngx_ssl_recv",
    "up_ngx_ssl_recv",
    "uret_ngx_ssl_recv",
  ]]);
  assertEquals(nginx.sites[0].offset, await fileOffset(NGINX, parseInt(nm.split(" ")[0], 16)));

  const mod = serverSites(await ElfFile.open(MOD_SSL));
  assertEquals(mod.method, "plt");
  assertEquals(
    mod.sites.map((s) => [s.symbol, s.entry]).sort(),
    [["SSL_accept@plt", "up_ssl_hshake"], ["SSL_do_handshake@plt", "up_ssl_hshake"], [
      "SSL_read@plt",
      "up_ssl_read",
    ]],
  );

  // The apache2 executable calls no SSL function: no site, and the reason says so.
  const apache = serverSites(await ElfFile.open("/usr/sbin/apache2"));
  assertEquals(apache.method, undefined);
  assert(apache.why?.includes("no ngx_ssl_recv"), apache.why);

  const lib = librarySites(await ElfFile.open("/lib/x86_64-linux-gnu/libssl.so.3"));
  assertEquals(lib.method, "library");
  assertEquals(lib.sites.map((s) => s.symbol), ["SSL_do_handshake", "SSL_read", "SSL_read_ex"]);
});

Deno.test("PLT stubs: another architecture's file gives none (the caller falls back to libssl)", async () => {
  const bytes = (await Deno.readFile(MOD_SSL)).slice();
  new DataView(bytes.buffer).setUint16(18, 183, true); // e_machine = EM_AARCH64
  const elf = new ElfFile(bytes, "arm64-mod_ssl.so");
  assertEquals(pltStubs(elf, ["SSL_read"]).size, 0);
  const c = serverSites(elf);
  assertEquals([c.method, c.sites.length], [undefined, 0]);
});
