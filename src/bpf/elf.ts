/**
 * Symbol → file offset in a shared library, read from the ELF itself (.dynsym, then .symtab; the PT_LOAD
 * segment maps the virtual address to a file offset), and where a library lives (running processes'
 * /proc/PID/maps, /etc/ld.so.cache, standard directories). Uprobes attach at file offsets.
 */

export class ElfError extends Error {
  constructor(message: string, readonly path: string) {
    super(`${path}: ${message}`);
    this.name = "ElfError";
  }
}

export interface ElfSymbol {
  name: string;
  /** st_value: the virtual address in the library. */
  value: number;
  size: number;
  /** The file offset a uprobe attaches at. */
  offset: number;
  table: ".dynsym" | ".symtab";
}

interface Section {
  name: string;
  type: number;
  offset: number;
  size: number;
  link: number;
  entsize: number;
}

interface Segment {
  type: number;
  flags: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

/** A parsed 64-bit little-endian ELF file (x86-64, aarch64). */
export class ElfFile {
  readonly sections: Section[] = [];
  readonly segments: Segment[] = [];
  #dv: DataView;

  constructor(readonly bytes: Uint8Array, readonly path = "<memory>") {
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (
      bytes.length < 64 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46
    ) {
      throw new ElfError("not an ELF file", path);
    }
    if (bytes[4] !== 2) throw new ElfError("not a 64-bit ELF", path);
    if (bytes[5] !== 1) throw new ElfError("not little-endian", path);
    const dv = this.#dv;
    const phoff = this.#u64(32), shoff = this.#u64(40);
    const phentsize = dv.getUint16(54, true), phnum = dv.getUint16(56, true);
    const shentsize = dv.getUint16(58, true),
      shnum = dv.getUint16(60, true),
      shstrndx = dv.getUint16(62, true);
    for (let i = 0; i < phnum; i++) {
      const o = phoff + i * phentsize;
      this.#need(o + 56);
      this.segments.push({
        type: dv.getUint32(o, true),
        flags: dv.getUint32(o + 4, true),
        offset: this.#u64(o + 8),
        vaddr: this.#u64(o + 16),
        filesz: this.#u64(o + 32),
      });
    }
    const raw: (Omit<Section, "name"> & { nameOff: number })[] = [];
    for (let i = 0; i < shnum; i++) {
      const o = shoff + i * shentsize;
      this.#need(o + 64);
      raw.push({
        nameOff: dv.getUint32(o, true),
        type: dv.getUint32(o + 4, true),
        offset: this.#u64(o + 24),
        size: this.#u64(o + 32),
        link: dv.getUint32(o + 40, true),
        entsize: this.#u64(o + 56),
      });
    }
    const shstr = raw[shstrndx];
    for (const s of raw) {
      const { nameOff, ...rest } = s;
      this.sections.push({ ...rest, name: shstr ? this.#cstr(shstr.offset + nameOff) : "" });
    }
  }

  static async open(path: string): Promise<ElfFile> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      throw new ElfError(`cannot read: ${e instanceof Error ? e.message : e}`, path);
    }
    return new ElfFile(bytes, path);
  }

  #need(end: number): void {
    if (end > this.bytes.length) throw new ElfError("truncated", this.path);
  }
  #u64(o: number): number {
    this.#need(o + 8);
    return Number(this.#dv.getBigUint64(o, true));
  }
  #cstr(o: number): string {
    let e = o;
    while (e < this.bytes.length && this.bytes[e] !== 0) e++;
    return new TextDecoder().decode(this.bytes.subarray(o, e));
  }

  /** Virtual address → file offset through the PT_LOAD segment that contains it. */
  vaddrToOffset(vaddr: number): number {
    for (const s of this.segments) {
      if (s.type === 1 /* PT_LOAD */ && vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz) {
        return vaddr - s.vaddr + s.offset;
      }
    }
    throw new ElfError(`address 0x${vaddr.toString(16)} is in no PT_LOAD segment`, this.path);
  }

  /**
   * Every symbol of the SHT_SYMTAB tables that is defined in a section, with that section's name (a BPF
   * object's variables and programs: the layout generator reads their section offsets here).
   */
  definedSymbols(): { name: string; section: string; value: number; size: number }[] {
    const out: { name: string; section: string; value: number; size: number }[] = [];
    for (const sec of this.sections) {
      if (sec.type !== 2 /* SHT_SYMTAB */) continue;
      const strtab = this.sections[sec.link];
      if (!strtab) continue;
      for (let o = sec.offset; o + 24 <= sec.offset + sec.size; o += 24) {
        this.#need(o + 24);
        const shndx = this.#dv.getUint16(o + 6, true);
        if (shndx === 0 || shndx >= this.sections.length) continue;
        out.push({
          name: this.#cstr(strtab.offset + this.#dv.getUint32(o, true)),
          section: this.sections[shndx].name,
          value: this.#u64(o + 8),
          size: this.#u64(o + 16),
        });
      }
    }
    return out;
  }

  /** A defined function symbol by name: .dynsym first (exported), then .symtab (unstripped files). */
  findSymbol(name: string): ElfSymbol | undefined {
    for (const table of [".dynsym", ".symtab"] as const) {
      const sec = this.sections.find((s) => s.name === table);
      if (!sec || sec.entsize < 24) continue;
      const strtab = this.sections[sec.link];
      if (!strtab) continue;
      const want = new TextEncoder().encode(name);
      for (let o = sec.offset; o + 24 <= sec.offset + sec.size; o += sec.entsize) {
        this.#need(o + 24);
        const nameOff = this.#dv.getUint32(o, true);
        const info = this.bytes[o + 4];
        const shndx = this.#dv.getUint16(o + 6, true);
        const type = info & 0xf;
        if (shndx === 0 || (type !== 2 /* FUNC */ && type !== 10 /* GNU_IFUNC */)) continue;
        const s = strtab.offset + nameOff;
        if (!matchAt(this.bytes, s, want)) continue;
        const value = this.#u64(o + 8);
        return { name, value, size: this.#u64(o + 16), offset: this.vaddrToOffset(value), table };
      }
    }
    return undefined;
  }
}

function matchAt(b: Uint8Array, at: number, want: Uint8Array): boolean {
  if (at + want.length >= b.length) return false;
  for (let i = 0; i < want.length; i++) if (b[at + i] !== want[i]) return false;
  return b[at + want.length] === 0;
}

/** The file offset of `symbol` in the library at `path`; an ElfError when absent. */
export async function symbolOffset(path: string, symbol: string): Promise<ElfSymbol> {
  const elf = await ElfFile.open(path);
  const sym = elf.findSymbol(symbol);
  if (!sym) throw new ElfError(`symbol ${symbol} not found (.dynsym/.symtab)`, path);
  return sym;
}

/** Parses /etc/ld.so.cache (glibc "glibc-ld.so.cache1.1" format): soname → paths. */
export function parseLdSoCache(
  bytes: Uint8Array,
  archFlag: number | undefined = Deno.build.arch === "x86_64" ? 0x0300 : 0x0a00,
): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const magic = "glibc-ld.so.cache1.1";
  let base = -1;
  const text = new TextDecoder("latin1").decode(bytes.subarray(0, Math.min(bytes.length, 65536)));
  base = text.indexOf(magic);
  if (base < 0) return out;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nlibs = dv.getUint32(base + 20, true);
  const entries = base + 48;
  const str = (o: number) => {
    let e = o;
    while (e < bytes.length && bytes[e] !== 0) e++;
    return new TextDecoder().decode(bytes.subarray(o, e));
  };
  for (let i = 0; i < nlibs; i++) {
    const e = entries + i * 24;
    if (e + 24 > bytes.length) break;
    // String offsets are relative to the new-format header.
    const flags = dv.getInt32(e, true);
    // Keep only this machine's word size and arch: x86-64 0x0300, aarch64 0x0a00 (FLAG_*_LIB64).
    if (archFlag !== undefined && (flags & 0xff00) !== archFlag) continue;
    const key = str(base + dv.getUint32(e + 4, true));
    const value = str(base + dv.getUint32(e + 8, true));
    const list = out.get(key) ?? [];
    list.push(value);
    out.set(key, list);
  }
  return out;
}

const STD_DIRS = [
  `/lib/${Deno.build.arch}-linux-gnu`,
  `/usr/lib/${Deno.build.arch}-linux-gnu`,
  "/lib64",
  "/usr/lib64",
  "/usr/lib",
  "/lib",
  "/usr/local/lib",
];

export interface LibraryLocation {
  path: string;
  source: "process" | "ld.so.cache" | "standard path";
  /** The process the path was seen in. */
  pid?: number;
}

async function exists(p: string): Promise<boolean> {
  try {
    return (await Deno.stat(p)).isFile;
  } catch {
    return false;
  }
}

/** Paths of `soname` mapped by running processes named in `comms` (the running server's exact file). */
export async function libraryFromProcesses(soname: string, comms: string[]): Promise<LibraryLocation[]> {
  const out: LibraryLocation[] = [];
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir("/proc"));
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const comm = (await Deno.readTextFile(`/proc/${e.name}/comm`)).trim();
      if (!comms.includes(comm)) continue;
      const maps = await Deno.readTextFile(`/proc/${e.name}/maps`);
      for (const line of maps.split("\n")) {
        const path = line.split(/\s+/).slice(5).join(" ");
        if (path.endsWith("/" + soname) && !out.some((o) => o.path === path)) {
          out.push({ path, source: "process", pid: Number(e.name) });
        }
      }
    } catch {
      // the process exited or is not readable
    }
  }
  return out;
}

/**
 * Where `soname` lives: a running server's mapping first (the inode its uprobes must hit), then the
 * dynamic linker's cache, then standard directories. Undefined when nowhere.
 */
export async function findLibrary(
  soname: string,
  comms: string[] = ["apache2", "httpd"],
): Promise<LibraryLocation | undefined> {
  const running = await libraryFromProcesses(soname, comms);
  if (running.length) return running[0];
  try {
    const cache = parseLdSoCache(await Deno.readFile("/etc/ld.so.cache"));
    for (const p of cache.get(soname) ?? []) if (await exists(p)) return { path: p, source: "ld.so.cache" };
  } catch {
    // no cache (musl, containers)
  }
  for (const d of STD_DIRS) {
    const p = `${d}/${soname}`;
    if (await exists(p)) return { path: p, source: "standard path" };
  }
  return undefined;
}

/** One file mapping of a process, from /proc/PID/maps. */
export interface MappedFile {
  pid: number;
  /** The path the kernel prints, without the " (deleted)" suffix. */
  path: string;
  /** The file was replaced or removed since it was mapped (a package upgrade): the path is another file now. */
  deleted: boolean;
  /** st_dev as stat() reports it (glibc makedev of the maps "major:minor"). */
  dev: number;
  inode: number;
  /** "start-end": /proc/PID/map_files/<range> opens the mapped file itself, also a deleted one. */
  range: string;
}

/** glibc's makedev(): how stat() encodes st_dev. */
export function makedev(major: number, minor: number): number {
  return ((major & 0xfff) << 8) + (minor & 0xff) + (minor & 0xfff00) * 4096 +
    (major & 0xfffff000) * 2 ** 32;
}

/** One line of /proc/PID/maps that maps a file. */
export interface MapLine {
  start: bigint;
  end: bigint;
  /** "r-xp" */
  perms: string;
  dev: number;
  inode: number;
  /** Without the " (deleted)" suffix. */
  path: string;
  deleted: boolean;
}

/** The file mappings of /proc/PID/maps text, one per line (anonymous and pseudo mappings left out). */
export function mapLines(text: string): MapLine[] {
  const out: MapLine[] = [];
  for (const line of text.split("\n")) {
    // "7f…-7f… r-xp 00002000 fe:00 5595137    /usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2 (deleted)"
    const m =
      /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+([0-9a-f]+):([0-9a-f]+)\s+(\d+)\s+(\/.*?)( \(deleted\))?$/
        .exec(line);
    if (!m) continue;
    out.push({
      start: BigInt(`0x${m[1]}`),
      end: BigInt(`0x${m[2]}`),
      perms: m[3],
      dev: makedev(parseInt(m[4], 16), parseInt(m[5], 16)),
      inode: Number(m[6]),
      path: m[7],
      deleted: m[8] !== undefined,
    });
  }
  return out;
}

/** Parses /proc/PID/maps text: one entry per distinct (dev, inode, path) whose basename matches `name`. */
export function parseMaps(pid: number, text: string, name: RegExp): MappedFile[] {
  const out: MappedFile[] = [];
  const seen = new Set<string>();
  for (const l of mapLines(text)) {
    if (!name.test(l.path.slice(l.path.lastIndexOf("/") + 1))) continue;
    const key = `${l.dev}:${l.inode}:${l.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const range = `${l.start.toString(16)}-${l.end.toString(16)}`;
    out.push({ pid, path: l.path, deleted: l.deleted, dev: l.dev, inode: l.inode, range });
  }
  return out;
}

/** Files whose basename matches `name` mapped by the given processes (unreadable or exited ones skipped). */
export function mappedFiles(pids: Iterable<number>, name: RegExp): MappedFile[] {
  const out: MappedFile[] = [];
  for (const pid of pids) {
    let text: string;
    try {
      text = Deno.readTextFileSync(`/proc/${pid}/maps`);
    } catch {
      continue;
    }
    out.push(...parseMaps(pid, text, name));
  }
  return out;
}
