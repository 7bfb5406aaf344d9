import { assertEquals, assertMatch } from "../testing/asserts.ts";
import { Health } from "./health.ts";

Deno.test("health", async (t) => {
  await t.step("a sink failing for more than 60 s makes it unhealthy; a success clears it", () => {
    const h = new Health();
    h.sinkFailed("clickhouse", 1_000);
    h.sinkFailed("clickhouse", 30_000); // the streak keeps its first failure time
    assertEquals(h.check(61_000).healthy, true, "exactly 60 s is still fine");
    const bad = h.check(61_001);
    assertEquals(bad.healthy, false);
    assertMatch(bad.reasons[0], /sink clickhouse failing for 60 s/);
    h.sinkOk("clickhouse");
    assertEquals(h.check(62_000).healthy, true);
  });

  await t.step("drops above the ratio within the window make it unhealthy, then age out", () => {
    const tot = { captured: 0, dropped: 0 };
    const h = new Health({ dropRatioMax: 0.01, dropMinCount: 100, windowMs: 60_000 }, () => tot);
    const table: [number, number, number, boolean][] = [
      // t (ms), captured, dropped, healthy
      [0, 0, 0, true],
      [10_000, 100_000, 99, true], // below the minimum count
      [20_000, 100_000, 150, true], // 150 of 100k is under 1 %
      [30_000, 110_000, 1_150, false], // 1,150 of 110k
      [95_000, 200_000, 1_150, true], // drops older than the window
    ];
    for (const [t, c, d, ok] of table) {
      tot.captured = c;
      tot.dropped = d;
      assertEquals(h.check(t).healthy, ok, `at ${t} ms`);
    }
  });
});
