import { assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import { hash, HybridMap, NumMap } from "./nummap.ts";

/** Keys that collide and wrap in a small table: a few small integers, connection-key-sized ones, oddities. */
const key = fc.oneof(
  fc.integer({ min: 0, max: 40 }),
  fc.integer({ min: 0, max: 40 }).map((i) => 2 ** 48 * (i % 3) + 0x7f000001 * 65536 + i),
  fc.constantFrom(-1, -0, 0.5, 2 ** 53 - 1, -(2 ** 40)),
);
const op = fc.tuple(fc.constantFrom("set", "delete", "get"), key, fc.integer());

Deno.test("NumMap behaves as a Map of numbers through any sequence of sets and deletes", () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
      const m = new NumMap<number>(4), model = new Map<number, number>();
      for (const [o, k, v] of ops) {
        if (o === "set") {
          m.set(k, v);
          model.set(k, v);
        } else if (o === "delete") assertEquals(m.delete(k), model.delete(k), `delete ${k}`);
        else assertEquals(m.get(k), model.get(k), `get ${k}`);
        assertEquals(m.size, model.size);
      }
      for (const [k, v] of model) assertEquals(m.get(k), v, `after: get ${k}`);
      // Every key once present and now deleted is gone (backward shift left no entry unreachable).
      for (const [, k] of ops) assertEquals(m.has(k), model.has(k), `after: has ${k}`);
    }),
    { numRuns: 500 },
  );
});

Deno.test("NumMap: grows past 3/4 full, keeps entries; clear empties it", () => {
  const m = new NumMap<string>(8);
  for (let i = 0; i < 6; i++) m.set(i, "x");
  assertEquals(m.capacity, 8);
  m.set(6, "x");
  assertEquals(m.capacity, 16);
  m.clear();
  for (let i = 0; i < 1000; i++) m.set(i * 65537, `v${i}`);
  assertEquals(m.size, 1000);
  assertEquals(m.capacity, 2048);
  for (let i = 0; i < 1000; i++) assertEquals(m.get(i * 65537), `v${i}`);
  for (let i = 0; i < 1000; i += 2) assertEquals(m.delete(i * 65537), true);
  for (let i = 0; i < 1000; i++) assertEquals(m.get(i * 65537), i % 2 ? `v${i}` : undefined);
  m.clear();
  assertEquals([m.size, m.get(65537)], [0, undefined]);
});

Deno.test("HybridMap: numbers, strings and NaN as keys, as a Map keeps them", async (t) => {
  const cases: [string, unknown][] = [
    ["number", 5],
    ["large number", 2 ** 50 + 3],
    ["string", "10.0.0.1|1|10.0.0.2|80"],
    ["numeric string is not the number", "5"],
    ["NaN", NaN],
  ];
  const m = new HybridMap<unknown, string>();
  for (const [name, k] of cases) {
    await t.step(name, () => {
      m.set(k, name);
      assertEquals(m.get(k), name);
      assertEquals(m.has(k), true);
    });
  }
  assertEquals(m.size, cases.length);
  assertEquals(m.get(5), "number");
  assertEquals(m.delete("5"), true);
  assertEquals([m.get(5), m.has("5"), m.size], ["number", false, cases.length - 1]);
});

Deno.test("NumMap: a delete at the table's end leaves a wrapped entry at its home", () => {
  // Capacity 8: `last` lives in slot 7, `first` in slot 0; deleting `last` must not move `first` away from 0.
  const home = (k: number) => hash(k) & 7;
  let last = 0, first = 0;
  while (home(last) !== 7) last++;
  while (home(first) !== 0) first++;
  const m = new NumMap<string>(8);
  assertEquals(m.capacity, 8);
  m.set(last, "last").set(first, "first");
  assertEquals(m.delete(last), true);
  assertEquals([m.get(first), m.get(last), m.size], ["first", undefined, 1]);
  // And the reverse: a run that wraps (two keys at home 7) closes up over the end.
  let other = last + 1;
  while (home(other) !== 7) other++;
  m.set(last, "last").set(other, "other"); // slots 7 and 1 (0 is taken)
  assertEquals(m.delete(first), true);
  assertEquals(m.delete(last), true);
  assertEquals([m.get(other), m.size], ["other", 1]);
});
