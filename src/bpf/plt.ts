/**
 * PLT stubs of imported functions (x86-64): the address in the importing file through which its calls to
 * `SSL_read` etc. go. A uprobe there traps only the processes that map that file (the server), not every
 * process that maps the library; at the stub the arguments are in place and the return address on the stack
 * is the caller's, so entry and return probes work as on the function itself.
 */
import type { ElfFile } from "./elf.ts";

const EM_X86_64 = 62;
const R_X86_64_GLOB_DAT = 6;
const R_X86_64_JUMP_SLOT = 7;

/** Imported symbol name → file offset of its PLT stub's `jmp *GOT(%rip)`, for the names asked. */
export function pltStubs(elf: ElfFile, names: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  const b = elf.bytes;
  if (b.length < 20 || new DataView(b.buffer, b.byteOffset, b.byteLength).getUint16(18, true) !== EM_X86_64) {
    return out; // other architectures' stubs (adrp/ldr/br) are not decoded: the caller falls back
  }
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u64 = (o: number) => Number(dv.getBigUint64(o, true));
  const dynsym = elf.sections.find((s) => s.name === ".dynsym");
  const dynstr = dynsym && elf.sections[dynsym.link];
  if (!dynsym || !dynstr || dynsym.entsize < 24) return out;
  const want = new Set(names);
  const symName = (i: number) => {
    const o = dynsym.offset + i * dynsym.entsize;
    if (o + 24 > b.length) return "";
    let s = dynstr.offset + dv.getUint32(o, true), e = s;
    while (e < b.length && b[e] !== 0) e++;
    const name = new TextDecoder().decode(b.subarray(s, e));
    s = name.indexOf("@"); // versioned names in some tables
    return s >= 0 ? name.slice(0, s) : name;
  };
  // GOT slot address → symbol, from the PLT relocations (lazy/now binding) and GLOB_DAT (.plt.got stubs).
  const slots = new Map<number, string>();
  for (const sec of elf.sections) {
    if (sec.type !== 4 /* SHT_RELA */ || sec.entsize < 24) continue;
    for (let o = sec.offset; o + 24 <= sec.offset + sec.size && o + 24 <= b.length; o += sec.entsize) {
      const type = dv.getUint32(o + 8, true);
      if (type !== R_X86_64_JUMP_SLOT && type !== R_X86_64_GLOB_DAT) continue;
      const name = symName(dv.getUint32(o + 12, true));
      if (want.has(name)) slots.set(u64(o), name);
    }
  }
  if (!slots.size) return out;
  for (const sec of elf.sections) {
    if (!/^\.plt(\.sec|\.got)?$/.test(sec.name)) continue;
    const vbase = sec.offset; // section offset ↔ address through its segment below
    let addr0: number;
    try {
      addr0 = sectionAddr(elf, sec.offset);
    } catch {
      continue;
    }
    for (let i = 0; i + 6 <= sec.size && vbase + i + 6 <= b.length; i++) {
      // jmp *disp32(%rip): ff 25, optionally with the bnd prefix f2 (MPX/IBT stubs).
      if (b[vbase + i] !== 0xff || b[vbase + i + 1] !== 0x25) continue;
      const target = addr0 + i + 6 + dv.getInt32(vbase + i + 2, true);
      const name = slots.get(target);
      if (!name || out.has(name)) continue;
      const at = i > 0 && b[vbase + i - 1] === 0xf2 ? i - 1 : i;
      out.set(name, vbase + at);
    }
  }
  return out;
}

/** Virtual address of a file offset, through the PT_LOAD segment that holds it. */
function sectionAddr(elf: ElfFile, offset: number): number {
  for (const s of elf.segments) {
    if (s.type === 1 && offset >= s.offset && offset < s.offset + s.filesz) {
      return offset - s.offset + s.vaddr;
    }
  }
  throw new Error(`offset 0x${offset.toString(16)} is in no PT_LOAD segment`);
}
