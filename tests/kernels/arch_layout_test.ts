/**
 * The event layout is one contract for both architectures: the arm64 BPF object (scripts/build-bpf.sh
 * --arch arm64, types from Debian 12's arm64 kernel BTF) must lay out every `ja4_*` struct, enum and
 * `.rodata` variable exactly as the x86 one, which src/bpf/layout.gen.ts describes. The TypeScript decoder
 * has one layout, so a difference here would be misread events on one of them.
 * Needs: clang, llvm-strip, bpftool, libbpf-dev, and Debian's mirror on first run (the arm64 kernel package).
 */
import { assert, assertEquals, assertNotEquals } from "../../src/testing/asserts.ts";
import { dumpBtf, generateLayout } from "../../scripts/gen-layout.ts";
import { SYSCALL_NUMBERS } from "../../src/bpf/probes.ts";

const ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname);
const HOST_ARCH = Deno.build.arch === "x86_64" ? "x86" : "arm64";
const OTHER_ARCH = HOST_ARCH === "x86" ? "arm64" : "x86";

async function buildBpf(args: string[]): Promise<void> {
  const r = await new Deno.Command("bash", {
    args: [`${ROOT}scripts/build-bpf.sh`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(r.stderr);
  assertEquals(r.code, 0, `scripts/build-bpf.sh ${args.join(" ")} failed:\n${err}`);
}

async function layoutOf(object: string): Promise<string> {
  return generateLayout(await dumpBtf(object), await Deno.readFile(object));
}

/** Names of the STRUCTs in an object's BTF. */
async function structNames(object: string): Promise<Set<string>> {
  const btf = await dumpBtf(object);
  return new Set(btf.types.filter((t) => t.kind === "STRUCT").map((t) => t.name));
}

Deno.test({
  name: "x86 and arm64 BPF objects: identical event layouts, each built against its own architecture",
  sanitizeResources: false,
  async fn() {
    await buildBpf([]);
    await buildBpf(["--arch", OTHER_ARCH]);
    const host = `${ROOT}dist/bpf/ja4ebpf.bpf.o`;
    const other = `${ROOT}dist/bpf/${OTHER_ARCH}/ja4ebpf.bpf.o`;
    const [x86, arm64] = HOST_ARCH === "x86" ? [host, other] : [other, host];

    // Really two architectures: libbpf's arm64 PT_REGS macros read `struct user_pt_regs` and the
    // `pt_regs___arm64` flavour (orig_x0 for syscall arguments); x86's read `struct pt_regs` alone.
    const [xs, as] = [await structNames(x86), await structNames(arm64)];
    assert(as.has("user_pt_regs") && as.has("pt_regs___arm64"), "the arm64 object is built for arm64");
    assert(!xs.has("user_pt_regs") && !xs.has("pt_regs___arm64"), "the x86 object is built for x86");
    assertNotEquals(await Deno.readFile(x86), await Deno.readFile(arm64), "two different objects");

    const [lx, la] = [await layoutOf(x86), await layoutOf(arm64)];
    if (lx !== la) {
      const a = lx.split("\n"), b = la.split("\n");
      const i = a.findIndex((l, k) => l !== b[k]);
      throw new Error(
        `the arm64 layout differs from x86's at line ${i + 1}:\n  x86:   ${a[i]}\n  arm64: ${b[i]}`,
      );
    }
    // And both are the layout the TypeScript side decodes with.
    assertEquals(la, await Deno.readTextFile(`${ROOT}src/bpf/layout.gen.ts`), "layout.gen.ts is current");
  },
});

Deno.test("raw_tp syscall numbers: the agent's table is each architecture's ABI (kernel UAPI headers)", async () => {
  // The kernel's own UAPI headers (linux-libc-dev): arm64 uses the generic table.
  const nr = async (header: string, name: string) => {
    const m = new RegExp(`^#define __NR_${name} (\\d+)$`, "m").exec(await Deno.readTextFile(header));
    assert(m, `${name} in ${header}`);
    return Number(m[1]);
  };
  const x86 = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
  const generic = "/usr/include/asm-generic/unistd.h";
  assertEquals(SYSCALL_NUMBERS.x86_64, { recvfrom: await nr(x86, "recvfrom"), read: await nr(x86, "read") });
  assertEquals(SYSCALL_NUMBERS.aarch64, {
    recvfrom: await nr(generic, "recvfrom"),
    read: await nr(generic, "read"),
  });
});
