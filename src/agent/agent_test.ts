import { assert, assertEquals } from "../testing/asserts.ts";
import { DEFAULT_CONFIG } from "../config/config.ts";
import { Agent, perfPagesPerCpu } from "./agent.ts";

Deno.test("perfPagesPerCpu spreads the configured buffer over the CPUs in powers of two", async (t) => {
  const cases: [number, number, number, number][] = [
    [16, 2, 4096, 2048],
    [16, 64, 4096, 64],
    [1, 128, 4096, 8],
    [24, 2, 4096, 2048],
  ];
  for (const [mb, cpus, page, want] of cases) {
    await t.step(`${mb} MiB on ${cpus} CPUs`, () => assertEquals(perfPagesPerCpu(mb, cpus, page), want));
  }
});

Deno.test("stop() runs once: a second caller waits for the same stop", async () => {
  const a = new Agent(structuredClone(DEFAULT_CONFIG));
  const first = a.stop(), second = a.stop();
  assert(first === second, "one promise for every caller");
  await first;
  assert(a.stop() === first, "and after it ended");
});
