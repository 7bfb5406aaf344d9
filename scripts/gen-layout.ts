// Generates src/bpf/layout.gen.ts from the BTF of the compiled BPF object: for every `ja4_*` struct of
// bpf/ja4ebpf.h its size and per-field offset/size/kind, for every `ja4_*` enum a const object.
// Reading the compiled object (not the C header) means the TypeScript side sees exactly what clang laid out.
//
//   deno run --allow-read --allow-write --allow-run scripts/gen-layout.ts OBJECT OUT.ts   write OUT.ts if changed
//   deno run --allow-read --allow-run scripts/gen-layout.ts OBJECT                         print to stdout

import { ElfError, ElfFile } from "../src/bpf/elf.ts";

/** One type of `bpftool -j btf dump file`. */
export interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  encoding?: string;
  bits_offset?: number;
  nr_bits?: number;
  members?: { name: string; type_id: number; bits_offset: number; bitfield_size?: number }[];
  values?: { name: string; val: number }[];
}

export interface BtfJson {
  types: BtfType[];
}

/** Raised for an object whose BTF the generator cannot describe. */
export class LayoutError extends Error {
  override name = "LayoutError";
}

/** Structs of bpf/ja4ebpf.h that only exist to carry other types into BTF. */
const SKIP = new Set(["ja4_btf_enums"]);

type Kind = "u8" | "u16" | "u32" | "u64" | "s8" | "s16" | "s32" | "s64" | "array" | "struct";

interface Field {
  name: string;
  offset: number;
  size: number;
  kind: Kind;
  elem?: Kind;
  count?: number;
  type?: string;
}

/** A symbol of the object's ELF symbol table. */
export interface ElfSymbol {
  name: string;
  section: string;
  offset: number;
  size: number;
}

/**
 * Symbols of a little-endian ELF64 object (the BPF object), read by src/bpf/elf.ts. The BTF DATASEC of an
 * unloaded object has zero offsets (libbpf fills them from these symbols at open).
 */
export function elfSymbols(bytes: Uint8Array): { symbols: ElfSymbol[]; sectionSizes: Map<string, number> } {
  let elf: ElfFile;
  try {
    elf = new ElfFile(bytes, "object");
  } catch (e) {
    if (e instanceof ElfError) throw new LayoutError(e.message);
    throw e;
  }
  const sectionSizes = new Map(elf.sections.map((s) => [s.name, s.size]));
  const symbols = elf.definedSymbols().map(({ name, section, value, size }) => ({
    name,
    section,
    offset: value,
    size,
  }));
  return { symbols, sectionSizes };
}

/** Runs bpftool on the object and returns its BTF as JSON. */
export async function dumpBtf(objectPath: string, bpftool = "bpftool"): Promise<BtfJson> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(bpftool, { args: ["-j", "btf", "dump", "file", objectPath] }).output();
  } catch (e) {
    throw new LayoutError(`cannot run ${bpftool}: ${(e as Error).message}`);
  }
  if (!out.success) {
    throw new LayoutError(
      `${bpftool} btf dump file ${objectPath}: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  const json = JSON.parse(new TextDecoder().decode(out.stdout)) as BtfJson;
  if (!Array.isArray(json.types)) throw new LayoutError(`${objectPath}: no BTF types`);
  return json;
}

function scalarKind(size: number, signed: boolean): Kind {
  const bits = size * 8;
  if (![8, 16, 32, 64].includes(bits)) throw new LayoutError(`no scalar kind for ${size} bytes`);
  return `${signed ? "s" : "u"}${bits}` as Kind;
}

class Types {
  readonly byId = new Map<number, BtfType>();
  constructor(btf: BtfJson) {
    for (const t of btf.types) this.byId.set(t.id, t);
  }
  get(id: number): BtfType {
    const t = this.byId.get(id);
    if (!t) throw new LayoutError(`BTF type ${id} missing`);
    return t;
  }
  /** Follows typedefs and qualifiers. */
  resolve(id: number): BtfType {
    let t = this.get(id);
    while (["TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG"].includes(t.kind)) {
      t = this.get(t.type_id!);
    }
    return t;
  }
  /** Kind and size of a member type. */
  describe(id: number): Omit<Field, "name" | "offset"> {
    const t = this.resolve(id);
    switch (t.kind) {
      case "INT":
        return { size: t.size!, kind: scalarKind(t.size!, t.encoding === "SIGNED") };
      case "ENUM":
        return { size: t.size!, kind: scalarKind(t.size!, false) };
      case "PTR":
        return { size: 8, kind: "u64" };
      case "STRUCT":
        return { size: t.size!, kind: "struct", type: t.name };
      case "ARRAY": {
        const elem = this.describe(t.type_id!);
        if (elem.kind === "array" || elem.kind === "struct") {
          throw new LayoutError(`arrays of ${elem.kind} are not supported`);
        }
        return { size: elem.size * t.nr_elems!, kind: "array", elem: elem.kind, count: t.nr_elems! };
      }
      default:
        throw new LayoutError(`unsupported member type ${t.kind} ${t.name}`);
    }
  }
}

/** ja4_event_hdr -> EVENT_HDR */
function structConstName(name: string): string {
  return name.replace(/^ja4_/, "").toUpperCase();
}

/** ja4_event_kind -> EventKind */
function enumConstName(name: string): string {
  return name.replace(/^ja4_/, "").split("_").map((w) => w[0].toUpperCase() + w.slice(1)).join("");
}

/** The longest common prefix of the names, cut at a `_`. */
function commonPrefix(names: string[]): string {
  const words = names.map((n) => n.split("_"));
  let n = 0;
  while (words.every((w) => w.length > n + 1 && w[n] === words[0][n])) n++;
  return n === 0 ? "" : words[0].slice(0, n).join("_") + "_";
}

function fieldLine(f: Field): string {
  const parts = [`offset: ${f.offset}`, `size: ${f.size}`, `kind: "${f.kind}"`];
  if (f.elem) parts.push(`elem: "${f.elem}"`, `count: ${f.count}`);
  if (f.type) parts.push(`type: "${f.type}"`);
  return `    ${f.name}: { ${parts.join(", ")} },`;
}

/**
 * The TypeScript module for the `ja4_*` structs and enums of the BTF, sorted by name, and (given the
 * object's bytes) the layout of its `.rodata` config variables.
 */
export function generateLayout(btf: BtfJson, object?: Uint8Array): string {
  const types = new Types(btf);
  const structs = new Map<string, BtfType>();
  const enums = new Map<string, BtfType>();
  for (const t of btf.types) {
    if (!t.name?.startsWith("ja4_") || SKIP.has(t.name)) continue;
    if (t.kind === "STRUCT") structs.set(t.name, t);
    else if (t.kind === "ENUM") enums.set(t.name, t);
  }
  if (!structs.has("ja4_event_hdr")) throw new LayoutError("struct ja4_event_hdr is not in the object's BTF");

  const out: string[] = [
    "// Generated by scripts/gen-layout.ts from the BTF of the compiled BPF object (the structs and enums of",
    "// bpf/ja4ebpf.h). Do not edit: run scripts/build-bpf.sh. layout_test.ts fails when this file drifts.",
    "",
    'export type FieldKind = "u8" | "u16" | "u32" | "u64" | "s8" | "s16" | "s32" | "s64" | "array" | "struct";',
    "",
    "export interface FieldLayout {",
    "  readonly offset: number;",
    "  readonly size: number;",
    "  readonly kind: FieldKind;",
    "  /** arrays: element kind and count */",
    "  readonly elem?: FieldKind;",
    "  readonly count?: number;",
    "  /** nested structs: the C struct name */",
    "  readonly type?: string;",
    "}",
    "",
    "export interface StructLayout {",
    "  readonly name: string;",
    "  readonly size: number;",
    "  readonly fields: Readonly<Record<string, FieldLayout>>;",
    "}",
  ];
  const names = [...structs.keys()].sort();
  for (const name of names) {
    const t = structs.get(name)!;
    const fields: Field[] = (t.members ?? []).map((m) => {
      if (m.bitfield_size || m.bits_offset % 8 !== 0) {
        throw new LayoutError(`${name}.${m.name}: bitfields not allowed`);
      }
      return { name: m.name, offset: m.bits_offset / 8, ...types.describe(m.type_id) };
    });
    out.push("", `/** struct ${name} */`, `export const ${structConstName(name)} = {`);
    out.push(`  name: "${name}",`, `  size: ${t.size},`, "  fields: {");
    for (const f of fields) out.push(fieldLine(f));
    out.push("  },", "} as const satisfies StructLayout;");
  }
  out.push(
    "",
    "/** Every struct above. */",
    "export const STRUCTS: readonly StructLayout[] = [",
    ...names.map((n) => `  ${structConstName(n)},`),
    "];",
  );
  if (object) out.push(...rodataLayout(btf, types, object));
  for (const name of [...enums.keys()].sort()) {
    const t = enums.get(name)!;
    const values = t.values ?? [];
    const prefix = commonPrefix(values.map((v) => v.name));
    const cname = enumConstName(name);
    out.push("", `/** enum ${name} */`, `export const ${cname} = {`);
    for (const v of values) out.push(`  ${v.name.slice(prefix.length)}: ${v.val},`);
    out.push("} as const;", `export type ${cname} = (typeof ${cname})[keyof typeof ${cname}];`);
  }
  return out.join("\n") + "\n";
}

/** RODATA: the config variables of `.rodata` (set them between open and load). */
function rodataLayout(btf: BtfJson, types: Types, object: Uint8Array): string[] {
  const sec = btf.types.find((t) => t.kind === "DATASEC" && t.name === ".rodata") as
    | (BtfType & { vars?: { type_id: number }[] })
    | undefined;
  if (!sec) return [];
  const { symbols, sectionSizes } = elfSymbols(object);
  const fields: Field[] = (sec.vars ?? []).map((sv) => {
    const vt = types.get(sv.type_id);
    const sym = symbols.find((s) => s.section === ".rodata" && s.name === vt.name);
    if (!sym) throw new LayoutError(`.rodata variable ${vt.name} has no ELF symbol`);
    return { name: vt.name, offset: sym.offset, ...types.describe(vt.type_id!) };
  }).sort((a, b) => a.offset - b.offset);
  const out = [
    "",
    "/** The .rodata config variables (map `.rodata`): write them into its initial value before load. */",
    "export const RODATA = {",
    '  name: ".rodata",',
    `  size: ${sectionSizes.get(".rodata") ?? 0},`,
    "  fields: {",
  ];
  for (const f of fields) out.push(fieldLine(f));
  out.push("  },", "} as const satisfies StructLayout;");
  return out;
}

if (import.meta.main) {
  const [obj, outPath] = Deno.args;
  if (!obj) {
    console.error("usage: gen-layout.ts OBJECT [OUT.ts]");
    Deno.exit(2);
  }
  try {
    const text = generateLayout(await dumpBtf(obj), await Deno.readFile(obj));
    if (!outPath) {
      await Deno.stdout.write(new TextEncoder().encode(text));
    } else {
      let old = "";
      try {
        old = await Deno.readTextFile(outPath);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      if (old !== text) {
        await Deno.writeTextFile(outPath, text);
        console.error(`gen-layout: wrote ${outPath}`);
      }
    }
  } catch (e) {
    console.error(`gen-layout: ${e instanceof LayoutError ? e.message : e}`);
    Deno.exit(1);
  }
}
