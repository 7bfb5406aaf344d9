// Drift and invariants of layout.gen.ts, the generator's error paths, and the verifier on the built object.
// Needs the object (scripts/build-bpf.sh) and bpftool; the verifier test also needs root, clang and libbpf-dev.
import { assert, assertEquals, assertGreater, assertThrows } from "../testing/asserts.ts";
import { type BtfJson, dumpBtf, elfSymbols, generateLayout, LayoutError } from "../../scripts/gen-layout.ts";
import {
  DATA_EVENT,
  DropReason,
  EVENT_HDR,
  EventKind,
  Limits,
  PKT_EVENT,
  RODATA,
  type StructLayout,
  STRUCTS,
  SYN_FACTS,
} from "./layout.gen.ts";

const OBJECT = new URL("../../dist/bpf/ja4ebpf.bpf.o", import.meta.url);
const LAYOUT = new URL("./layout.gen.ts", import.meta.url);
const LOADCHECK_C = new URL("../../bpf/test/loadcheck.c", import.meta.url);

const path = (u: URL) => decodeURIComponent(u.pathname);

async function readObject(): Promise<Uint8Array> {
  try {
    return await Deno.readFile(OBJECT);
  } catch (e) {
    throw new Error(`BPF object missing (${(e as Error).message}): run scripts/build-bpf.sh first`);
  }
}

Deno.test("layout.gen.ts is what the generator makes from the built object (no drift)", async () => {
  const bytes = await readObject();
  const fresh = generateLayout(await dumpBtf(path(OBJECT)), bytes);
  const committed = await Deno.readTextFile(LAYOUT);
  assert(
    fresh === committed,
    "src/bpf/layout.gen.ts differs from the object's BTF: run scripts/build-bpf.sh and commit the result",
  );
});

Deno.test("every event struct has explicit padding and 8-byte alignment", async (t) => {
  for (const s of STRUCTS as readonly StructLayout[]) {
    await t.step(s.name, () => {
      const fields = Object.entries(s.fields).sort((a, b) => a[1].offset - b[1].offset);
      let end = 0;
      for (const [name, f] of fields) {
        assertEquals(f.offset, end, `${s.name}.${name}: implicit hole before it (write the padding out)`);
        end = f.offset + f.size;
      }
      const sum = fields.reduce((n, [, f]) => n + f.size, 0);
      assertEquals(sum, s.size, `${s.name}: field sizes add up to ${sum}, struct is ${s.size}`);
      assertEquals(s.size % 8, 0, `${s.name}: size ${s.size} is not a multiple of 8`);
      if (s.name.endsWith("_event")) {
        const hdr = s.fields["hdr"];
        assert(hdr !== undefined, `${s.name} has no hdr`);
        assertEquals(hdr, { offset: 0, size: EVENT_HDR.size, kind: "struct", type: "ja4_event_hdr" });
        // the kind-specific part (and so data[]) starts 8-byte aligned
        const after = fields.find(([, f]) => f.offset === EVENT_HDR.size);
        assert(after !== undefined && after[1].offset % 8 === 0, `${s.name}: nothing at the end of hdr`);
      }
    });
  }
});

Deno.test("event layouts match the documented contract", async (t) => {
  const cases: [string, number, number][] = [
    ["header size", EVENT_HDR.size, 88],
    ["header kind offset", EVENT_HDR.fields.kind.offset, 0],
    ["header ts_ns offset (8-aligned u64)", EVENT_HDR.fields.ts_ns.offset % 8, 0],
    ["header comm length", EVENT_HDR.fields.comm.size, Limits.COMM_LEN],
    ["header saddr length", EVENT_HDR.fields.saddr.size, 16],
    ["data event fixed part (header, pos, SYN facts)", DATA_EVENT.fields.data.offset, 160],
    ["data event SYN facts", DATA_EVENT.fields.syn.size, SYN_FACTS.size],
    ["data event chunk", DATA_EVENT.fields.data.count, Limits.CHUNK_MAX],
    ["pkt event fixed part", PKT_EVENT.fields.data.offset, 96],
    ["pkt event bytes", PKT_EVENT.fields.data.count, Limits.PKT_MAX],
    ["syn options", SYN_FACTS.fields.options.count, Limits.TCP_OPT_MAX],
    ["capture max = chunk * chunks", Limits.CAPTURE_MAX, Limits.CHUNK_MAX * Limits.CHUNKS_MAX],
    ["drop reasons are 0..MAX-1", Object.keys(DropReason).length - 1, DropReason.MAX],
  ];
  for (const [name, actual, expected] of cases) {
    await t.step(name, () => assertEquals(actual, expected));
  }
  await t.step("event kinds are distinct", () => {
    const v = Object.values(EventKind);
    assertEquals(new Set(v).size, v.length);
  });
  await t.step("rodata variables do not overlap and fit", () => {
    const fields = Object.entries(RODATA.fields).sort((a, b) => a[1].offset - b[1].offset);
    let end = 0;
    for (const [name, f] of fields) {
      assert(f.offset >= end, `${name} overlaps the variable before it`);
      assertEquals(f.offset % f.size, 0, `${name} misaligned`);
      end = f.offset + f.size;
    }
    assert(end <= RODATA.size, "rodata variables past the section");
    assertGreater(fields.length, 5);
  });
});

// Small hand-made BTF for the generator's own rules.
function btf(
  members: { name: string; type_id: number; bits_offset: number; bitfield_size?: number }[],
): BtfJson {
  return {
    types: [
      { id: 1, kind: "INT", name: "unsigned int", size: 4, encoding: "(none)" },
      { id: 2, kind: "TYPEDEF", name: "__u32", type_id: 1 },
      { id: 3, kind: "INT", name: "int", size: 4, encoding: "SIGNED" },
      { id: 4, kind: "INT", name: "unsigned char", size: 1, encoding: "(none)" },
      { id: 5, kind: "ARRAY", name: "(anon)", type_id: 4, nr_elems: 16 },
      { id: 6, kind: "STRUCT", name: "ja4_event_hdr", size: 24, members },
      { id: 7, kind: "UNION", name: "ja4_u", size: 4 },
      {
        id: 8,
        kind: "ENUM",
        name: "ja4_test_kind",
        size: 4,
        values: [{ name: "JA4_TK_A", val: 1 }, { name: "JA4_TK_BB", val: 7 }],
      },
      { id: 9, kind: "FLOAT", name: "float", size: 4 },
    ],
  };
}

Deno.test("generator rules", async (t) => {
  await t.step("typedefs resolve, signedness and arrays are described", () => {
    const text = generateLayout(btf([
      { name: "a", type_id: 2, bits_offset: 0 },
      { name: "b", type_id: 3, bits_offset: 32 },
      { name: "c", type_id: 5, bits_offset: 64 },
    ]));
    assert(text.includes('a: { offset: 0, size: 4, kind: "u32" },'), text);
    assert(text.includes('b: { offset: 4, size: 4, kind: "s32" },'));
    assert(text.includes('c: { offset: 8, size: 16, kind: "array", elem: "u8", count: 16 },'));
    assert(!text.includes("ja4_u"), "unions are not layouts");
  });
  await t.step("enum prefixes are cut at the common words", () => {
    const text = generateLayout(btf([{ name: "a", type_id: 2, bits_offset: 0 }]));
    assert(text.includes("export const TestKind = {\n  A: 1,\n  BB: 7,\n} as const;"), text);
  });
  const bad: [string, BtfJson, RegExp][] = [
    ["bitfield", btf([{ name: "a", type_id: 2, bits_offset: 3, bitfield_size: 3 }]), /bitfield/],
    ["unsupported type", btf([{ name: "f", type_id: 9, bits_offset: 0 }]), /unsupported member type FLOAT/],
    ["dangling type id", btf([{ name: "x", type_id: 99, bits_offset: 0 }]), /BTF type 99 missing/],
    ["no header struct", { types: [] }, /ja4_event_hdr/],
  ];
  for (const [name, input, re] of bad) {
    await t.step(`rejects: ${name}`, () => {
      const e = assertThrows(() => generateLayout(input), LayoutError);
      assert(re.test(e.message), e.message);
    });
  }
  await t.step("rejects a non-ELF object", () => {
    assertThrows(
      () => elfSymbols(new TextEncoder().encode("not an ELF file at all, long enough")),
      LayoutError,
    );
  });
});

Deno.test("the object passes the verifier: each program alone, and all but fexit together", async () => {
  assert(Deno.uid() === 0, "this test loads BPF programs: run it as root");
  await readObject();
  const dir = await Deno.makeTempDir({ prefix: "ja4-loadcheck-" });
  try {
    const bin = `${dir}/loadcheck`;
    const cc = await new Deno.Command("clang", {
      args: ["-O1", "-o", bin, path(LOADCHECK_C), "-lbpf"],
      stderr: "piped",
    }).output().catch((e) => {
      throw new Error(`clang not runnable (apt-get install clang libbpf-dev): ${e.message}`);
    });
    assert(cc.success, `compiling loadcheck.c failed: ${new TextDecoder().decode(cc.stderr)}`);
    const out = await new Deno.Command(bin, { args: [path(OBJECT)] }).output();
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => l.split("|"));
    const result = new Map(lines.map(([name, res]) => [name, res]));
    assertGreater(result.size, 20);
    for (const [name, res] of result) {
      // Trampolines are locked down on some kernels (EPERM here); everything else must load.
      if (name === "fexit_recvfrom") continue;
      assertEquals(res, "LOADED", `${name} was refused by the verifier: ${res}`);
    }
    const all = await new Deno.Command(bin, { args: [path(OBJECT), "--all-but", "fexit_recvfrom"] })
      .output();
    assertEquals(new TextDecoder().decode(all.stdout).trim(), "ALL LOADED");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
