import { assert, assertEquals } from "../testing/asserts.ts";
import { AGENT_V8_FLAGS } from "../../tests/helpers/agent.ts";
import { exposedGc, HeapKeeper } from "./heap.ts";

Deno.test("HeapKeeper", async (t) => {
  await t.step("collects once per interval, from the first tick past it", () => {
    let calls = 0;
    const k = new HeapKeeper(() => calls++, 60_000, 0);
    const ticks: [now: number, collected: boolean][] = [
      [1_000, false],
      [59_999, false],
      [60_000, true],
      [60_500, false],
      [119_999, false],
      [125_000, true],
      [184_999, false],
      [185_000, true],
    ];
    for (const [now, want] of ticks) assertEquals(k.tick(now), want, `at ${now} ms`);
    assertEquals(calls, 3);
  });
  await t.step("without an exposed gc it never collects", () => {
    const k = new HeapKeeper(undefined, 1, 0);
    for (let now = 0; now < 10; now++) assertEquals(k.tick(now), false);
  });
  await t.step("the packaged V8 flags expose gc, and a forced collection frees garbage", async () => {
    // A child with the agent's own flags (scripts/agent-v8-flags): the flag the keeper needs is there, and
    // the collection it forces takes back what a burst of garbage left in the heap.
    const code = `
      import { exposedGc } from ${JSON.stringify(new URL("./heap.ts", import.meta.url).href)};
      const gc = exposedGc();
      if (!gc) { console.log("no gc"); Deno.exit(0); }
      // Garbage a WeakRef watches; its job ends first (a WeakRef keeps its target alive until then), and
      // nothing allocates after it, so only the forced collection can take it.
      let garbage = { items: Array.from({ length: 100000 }, (_, i) => ({ i })) };
      const watch = new WeakRef(garbage);
      garbage = null;
      await new Promise((r) => setTimeout(r, 0));
      gc();
      console.log(JSON.stringify({ collected: watch.deref() === undefined }));`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", `--v8-flags=${AGENT_V8_FLAGS}`, code],
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert(out.success, text);
    assert(text !== "no gc", `scripts/agent-v8-flags lacks --expose-gc (${AGENT_V8_FLAGS})`);
    assertEquals(JSON.parse(text), { collected: true }, "the forced collection took the garbage");
  });
  await t.step("this test runner has no gc exposed (the keeper stays off)", () => {
    assertEquals(exposedGc(), undefined);
  });
});
