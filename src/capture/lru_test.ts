import { assert, assertEquals } from "../testing/asserts.ts";
import { LruMap } from "./lru.ts";

Deno.test("LruMap", async (t) => {
  await t.step("get makes an entry most recent; the least recent goes past the count cap", () => {
    const gone: string[] = [];
    const m = new LruMap<string, number>(3, Infinity, (k, _v, why) => gone.push(`${k}:${why}`));
    m.set("a", 1);
    m.set("b", 2);
    m.set("c", 3);
    assertEquals(m.get("a"), 1);
    m.set("d", 4);
    assertEquals(gone, ["b:count"]);
    assertEquals([...m.entries()].map(([k]) => k), ["c", "a", "d"]);
    assertEquals(m.peek("c"), 3); // peek keeps the order
    assertEquals(m.oldest()?.key, "c");
  });
  await t.step("byte budget evicts least recent first, never the entry being written unless alone", () => {
    const m = new LruMap<number, string>(100, 1000);
    for (let i = 0; i < 10; i++) m.set(i, "x", 100);
    assertEquals(m.bytes, 1000);
    const n = m.node(0)!; // 0 becomes most recent
    m.resize(n, 350); // over by 250: the three least recent (1, 2, 3) go
    assertEquals(m.evictedBytes, 3);
    assertEquals(m.has(1) || m.has(2) || m.has(3), false);
    assert(m.bytes <= 1000);
    m.set(99, "huge", 5000); // alone over the budget: everything else goes, then it too
    assertEquals(m.size, 0);
    assertEquals(m.bytes, 0);
  });
  await t.step("take deletes and hands back the entry: its value and bytes, the list relinked", () => {
    const m = new LruMap<string, number>(10, 1000);
    m.set("a", 1, 10);
    m.set("b", 2, 20);
    m.set("c", 3, 30);
    assertEquals([m.take("b")?.value, m.take("b"), m.take("zz")], [2, undefined, undefined]);
    assertEquals([m.size, m.bytes], [2, 40]);
    assertEquals([...m.entries()].map(([k]) => k), ["a", "c"]);
    assertEquals(m.delete("a"), true);
    assertEquals(m.delete("a"), false);
  });
  await t.step("delete and re-insert at scale stay O(1): no iteration over deleted keys", () => {
    // The old Map-order LRU re-inserted on every touch and evicted with keys().next(), which walks V8's
    // deleted-entry holes. Count evictions and check the order instead of timing.
    const m = new LruMap<number, number>(1000);
    for (let i = 0; i < 200_000; i++) {
      m.set(i, i);
      if (i % 3 === 0) m.delete(i - 1);
    }
    assertEquals(m.size, 1000);
    const keys = [...m.entries()].map(([k]) => k);
    assert(keys.every((k, i) => i === 0 || k > keys[i - 1]));
    assertEquals(keys[keys.length - 1], 199_999);
  });
});
