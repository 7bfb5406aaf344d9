import { assert, assertEquals } from "../testing/asserts.ts";
import { FULL_SCAN_MS, ServerFollower } from "./follow.ts";
import { TracedPids } from "../bpf/maps.ts";
import { makePlan, openPlanned } from "../bpf/plan.ts";
import { embeddedObject } from "../bpf/embedded.ts";
import { ServerKind } from "../bpf/layout.gen.ts";
import { requireRoot } from "../../tests/fixtures/bpf/fixture.ts";

/** A process whose name is `nginx` (a copy of sleep): what the /proc scan recognises as a server. */
async function fakeNginx(): Promise<{ pid: number; kill: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-follow-" });
  await Deno.copyFile("/bin/sleep", `${dir}/nginx`);
  await Deno.chmod(`${dir}/nginx`, 0o755);
  const child = new Deno.Command(`${dir}/nginx`, { args: ["30"], stdout: "null", stderr: "null" }).spawn();
  return {
    pid: child.pid,
    kill: async () => {
      child.kill("SIGKILL");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("ServerFollower: the /proc scan finds server processes, forgets exited ones; fixed ports stay", async () => {
  const f = new ServerFollower(["nginx"], [8080, 8443]);
  const ng = await fakeNginx();
  try {
    f.refresh(undefined, undefined);
    assertEquals(f.traced.get(ng.pid), "nginx");
    assertEquals([...f.ports].sort(), [8080, 8443]);
    assert(![...f.traced.values()].some((s) => s !== "nginx"), "only the servers asked for");
  } finally {
    await ng.kill();
  }
  f.refresh(undefined, undefined);
  assertEquals(f.traced.has(ng.pid), false, "an exited process is forgotten");
  const apacheOnly = new ServerFollower(["apache"], []);
  apacheOnly.refresh(undefined, undefined);
  assertEquals([...apacheOnly.traced.values()].filter((s) => s === "nginx"), []);
});

Deno.test("ServerFollower: where the kernel follows, the map is read back and /proc scanned every FULL_SCAN_MS", async () => {
  requireRoot();
  const bytes = embeddedObject();
  using p = openPlanned(bytes, makePlan(bytes, { hooks: [] }));
  const pids = new TracedPids(p.obj.map("traced_pids"));
  const f = new ServerFollower(["nginx"], [8080]);
  f.followActive = true;
  const ng = await fakeNginx();
  try {
    const t0 = 1_000_000;
    assertEquals(f.refresh(pids, undefined, t0), true, "the first refresh scans /proc and finds the server");
    assertEquals(pids.entries().get(ng.pid), ServerKind.NGINX);
    assertEquals(f.refresh(pids, undefined, t0 + 1000), false, "nothing changed");
    // What the fork program would do: a worker in the map only. The next refresh takes it from the map.
    pids.set(ng.pid + 100_000, ServerKind.NGINX);
    assertEquals(f.refresh(pids, undefined, t0 + 2000), true);
    assertEquals(f.traced.get(ng.pid + 100_000), "nginx", "read back from the kernel's map, no /proc scan");
    // The exit program removed the server: gone from the map, gone from traced (no scan to bring it back).
    pids.delete(ng.pid);
    f.refresh(pids, undefined, t0 + 3000);
    assertEquals(f.traced.has(ng.pid), false);
    // FULL_SCAN_MS later the /proc scan runs: the running server is put back, the pid that never ran goes.
    assertEquals(f.refresh(pids, undefined, t0 + FULL_SCAN_MS), true);
    assertEquals(
      pids.entries().get(ng.pid),
      ServerKind.NGINX,
      "the safety-net scan restores a missed process",
    );
    assertEquals(f.traced.has(ng.pid + 100_000), false, "a pid with no process is dropped by the scan");
  } finally {
    await ng.kill();
  }
});
