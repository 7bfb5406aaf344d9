import { assert, assertEquals, assertRejects, assertThrows } from "../testing/asserts.ts";
import {
  ElfError,
  ElfFile,
  findLibrary,
  makedev,
  mappedFiles,
  parseLdSoCache,
  parseMaps,
  symbolOffset,
} from "./elf.ts";

async function run(cmd: string, args: string[]): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`${cmd} is needed for this test (apt install binutils): ${e}`);
  }
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** File offset per binutils: nm's address mapped through readelf's PT_LOAD table. */
async function binutilsOffset(path: string, sym: string): Promise<{ value: number; offset: number }> {
  const nm = await run("nm", ["-D", "--defined-only", path]);
  const line = nm.split("\n").find((l) => l.split(/\s+/)[2]?.replace(/@.*/, "") === sym);
  if (!line) throw new Error(`nm: no ${sym} in ${path}`);
  const value = parseInt(line.split(/\s+/)[0], 16);
  const re = await run("readelf", ["-lW", path]);
  for (const l of re.split("\n")) {
    const m = l.match(/^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)/);
    if (!m) continue;
    const [off, vaddr, filesz] = [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
    if (value >= vaddr && value < vaddr + filesz) return { value, offset: value - vaddr + off };
  }
  throw new Error(`readelf: ${sym} in no LOAD segment`);
}

Deno.test("elf: symbol offsets agree with nm/readelf on the real libraries", async (t) => {
  const apr = await findLibrary("libapr-1.so.0");
  if (!apr) throw new Error("libapr-1.so.0 not found: install apache2 (libapr1)");
  const libc = await findLibrary("libc.so.6", []);
  assert(libc, "libc.so.6 found");
  const cases: [string, string][] = [
    [apr.path, "apr_socket_recv"],
    [apr.path, "apr_socket_send"],
    [libc.path, "getppid"],
    [libc.path, "recvfrom"],
  ];
  for (const [path, sym] of cases) {
    await t.step(`${sym} in ${path.split("/").pop()}`, async () => {
      const ours = await symbolOffset(path, sym);
      const theirs = await binutilsOffset(path, sym);
      assertEquals({ value: ours.value, offset: ours.offset }, theirs);
      assertEquals(ours.table, ".dynsym");
    });
  }
  await t.step("a missing symbol is an ElfError naming it", async () => {
    await assertRejects(() => symbolOffset(apr.path, "no_such_function"), ElfError, "no_such_function");
  });
});

Deno.test("elf: bad input is a typed error", async (t) => {
  const cases: [string, Uint8Array, string][] = [
    ["empty", new Uint8Array(0), "not an ELF"],
    [
      "text",
      new TextEncoder().encode("#!/bin/sh\necho hello, this is not an ELF file at all....................."),
      "not an ELF",
    ],
    ["32-bit", Uint8Array.from([0x7f, 0x45, 0x4c, 0x46, 1, 1, ...new Array(58).fill(0)]), "64-bit"],
  ];
  for (const [name, bytes, msg] of cases) {
    await t.step(name, () => {
      assertThrows(() => new ElfFile(bytes, name), ElfError, msg);
    });
  }
  await t.step("truncated real library", async () => {
    const libc = await findLibrary("libc.so.6", []);
    const head = (await Deno.readFile(libc!.path)).subarray(0, 4096);
    assertThrows(() => new ElfFile(head, "head").findSymbol("getppid"), ElfError, "truncated");
  });
  await t.step("missing file", async () => {
    await assertRejects(() => ElfFile.open("/nonexistent/libx.so"), ElfError, "cannot read");
  });
});

Deno.test("elf: ld.so.cache agrees with ldconfig -p", async () => {
  const cache = parseLdSoCache(await Deno.readFile("/etc/ld.so.cache"));
  const ldconfig = await run("ldconfig", ["-p"]);
  const line = ldconfig.split("\n").find((l) =>
    l.trim().startsWith("libapr-1.so.0 ") && l.includes("x86-64")
  );
  assert(line, "ldconfig lists libapr-1.so.0");
  assertEquals(cache.get("libapr-1.so.0"), [line.split("=> ")[1].trim()]);
  assertEquals(parseLdSoCache(new Uint8Array(100)).size, 0, "garbage gives an empty map");
});

Deno.test("parseMaps / mappedFiles: path, deleted flag, dev and inode as stat() sees them", async (t) => {
  await t.step("maps lines", () => {
    const text = [
      "7f10-7f20 r--p 00000000 fe:00 5595137                    /usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2",
      "7f20-7f30 r-xp 00002000 fe:00 5595137                    /usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2",
      "7f40-7f50 r-xp 00002000 103:02 77 /tmp/a b/libapr-1.so.0 (deleted)",
      "7f60-7f70 r-xp 00002000 fe:00 12 /usr/lib/x86_64-linux-gnu/libaprutil-1.so.0",
      "7f80-7f90 rw-p 00000000 00:00 0 ",
      "7fa0-7fb0 r-xp 00000000 00:00 0                          [vdso]",
    ].join("\n");
    assertEquals(parseMaps(9, text, /^libapr-1\.so/), [
      {
        pid: 9,
        path: "/usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2",
        deleted: false,
        dev: 0xfe00,
        inode: 5595137,
        range: "7f10-7f20",
      },
      {
        pid: 9,
        path: "/tmp/a b/libapr-1.so.0",
        deleted: true,
        dev: makedev(0x103, 2),
        inode: 77,
        range: "7f40-7f50",
      },
    ]);
  });
  await t.step("makedev matches glibc for large majors and minors", () => {
    assertEquals(makedev(8, 1), 0x801);
    assertEquals(makedev(259, 0x12345), 0x12310345);
  });
  await t.step("this process's libc: same dev and inode as stat()", () => {
    const m = mappedFiles([Deno.pid], /^libc\.so/);
    assert(m.length >= 1, "libc mapped by this process");
    const st = Deno.statSync(m[0].path);
    assertEquals([m[0].dev, m[0].inode, m[0].deleted], [st.dev, st.ino, false]);
    assertEquals(mappedFiles([2 ** 30], /^libc\.so/), [], "a missing process is skipped");
  });
});
