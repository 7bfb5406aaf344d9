import { assertEquals } from "../testing/asserts.ts";
import { perfPagesPerCpu } from "./agent.ts";

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
