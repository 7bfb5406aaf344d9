import { assert, assertEquals } from "../testing/asserts.ts";
import { ServerFollower } from "./follow.ts";

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
