import { assert, assertEquals, assertGreater } from "../testing/asserts.ts";
import { pageOutMappings } from "./pageout.ts";
import { mapLines } from "../bpf/elf.ts";

Deno.test("pageOutMappings: the mappings that hold only their files' bytes", async (t) => {
  const maps = mapLines([
    "55f8419bd000-55f84354b000 r--p 00000000 fe:00 5309230                    /opt/ja4ebpf/deno",
    "55f84354b000-55f8493e0000 r-xp 01b8e000 fe:00 5309230                    /opt/ja4ebpf/deno",
    "55f8493e0000-55f8497ae000 r--p 07a23000 fe:00 5309230                    /opt/ja4ebpf/deno",
    "55f8497ae000-55f8497e4000 rw-p 07df1000 fe:00 5309230                    /opt/ja4ebpf/deno",
    "55f8497e4000-55f8497f4000 rw-p 00000000 00:00 0 ",
    "7f0000000000-7f0000001000 r-xp 00000000 fe:00 77                         /usr/lib/libc.so.6",
    "7f0000002000-7f0000003000 r--p 00000000 fe:00 78                         /opt/ja4ebpf/deno (deleted)",
    "not a line",
  ].join("\n"));
  await t.step("mapLines: every file mapping, addresses as numbers, a replaced file marked", () => {
    assertEquals(maps.length, 6);
    assertEquals([maps[0].start, maps[0].end, maps[0].perms], [0x55f8419bd000n, 0x55f84354b000n, "r--p"]);
    assertEquals(maps.map((m) => m.deleted), [false, false, false, false, false, true]);
    assertEquals(maps[5].path, "/opt/ja4ebpf/deno");
  });
  await t.step("the executable's read-only and executable mappings only (not a replaced file's)", () => {
    const ro = pageOutMappings(maps, "/opt/ja4ebpf/deno");
    assertEquals(ro.filter((m) => m.path === "/opt/ja4ebpf/deno").map((m) => m.perms), [
      "r--p",
      "r-xp",
      "r--p",
    ]);
    assertEquals(ro.filter((m) => m.path === "/usr/lib/libc.so.6").length, 1);
  });
  await t.step("with the shared libraries' read-only mappings, not their data or anything else", () => {
    const more = mapLines([
      "7f1000000000-7f1000100000 r--p 00000000 fe:00 90                         /usr/lib/libcrypto.so.3",
      "7f1000100000-7f1000200000 r-xp 00100000 fe:00 90                         /usr/lib/libcrypto.so.3",
      "7f1000200000-7f1000210000 rw-p 00200000 fe:00 90                         /usr/lib/libcrypto.so.3",
      "7f1000300000-7f1000301000 r-xp 00000000 fe:00 91                         /usr/lib/libelf-0.188.so",
      "7f1000400000-7f1000401000 r--p 00000000 fe:00 92                         /usr/lib/ld-linux-x86-64.so.2",
      "7f1000500000-7f1000d00000 r--s 00000000 00:0e 1062                       anon_inode:bpf-map",
      "7f1000e00000-7f1000e01000 r--p 00000000 fe:00 93                         /var/cache/ja4ebpf/deps.sqlite",
      "7f1000f00000-7f1000f01000 r--p 00000000 fe:00 94                         /usr/lib/libgone.so.1 (deleted)",
    ].join("\n"));
    const picked = pageOutMappings([...maps, ...more], "/opt/ja4ebpf/deno").map((m) =>
      `${m.path} ${m.perms}`
    );
    assertEquals(picked, [
      "/opt/ja4ebpf/deno r--p",
      "/opt/ja4ebpf/deno r-xp",
      "/opt/ja4ebpf/deno r--p",
      "/usr/lib/libc.so.6 r-xp",
      "/usr/lib/libcrypto.so.3 r--p",
      "/usr/lib/libcrypto.so.3 r-xp",
      "/usr/lib/libelf-0.188.so r-xp",
      "/usr/lib/ld-linux-x86-64.so.2 r--p",
    ]);
  });
});

Deno.test("pageOutExecutable: a runtime of its own gives back its start-up pages and goes on running", async () => {
  // A copy of the runtime: no other process maps its pages (the kernel leaves pages another process maps).
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-pageout-" });
  try {
    const exe = `${dir}/deno`;
    await Deno.copyFile(Deno.execPath(), exe);
    await Deno.chmod(exe, 0o755);
    const mod = new URL("./pageout.ts", import.meta.url).href;
    const script = `import { pageOutExecutable } from ${JSON.stringify(mod)};
const r = pageOutExecutable();
// code that ran before runs again: its pages fault back in
const again = [1, 2, 3].map((x) => JSON.stringify({ x })).join();
console.log(JSON.stringify({ ...r, again }));`;
    const out = await new Deno.Command(exe, {
      args: ["eval", script],
      env: { NO_COLOR: "1" },
      stderr: "inherit",
    }).output();
    assert(out.success, `exit ${out.code}`);
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    if (r.errno === 22) return console.log("MADV_PAGEOUT: EINVAL (kernel older than 5.4): pages kept");
    assertEquals(r.errno, 0);
    assert(r.mappings >= 2, `${r.mappings} read-only mappings of the executable`);
    assertGreater(
      r.fileKbBefore - r.fileKbAfter,
      5 * 1024,
      `file pages ${r.fileKbBefore} → ${r.fileKbAfter} KiB`,
    );
    assertEquals(r.again, '{"x":1},{"x":2},{"x":3}');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
