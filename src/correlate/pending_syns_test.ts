import { assertEquals, assertThrows } from "../testing/asserts.ts";
import { PendingSyns } from "./pending_syns.ts";

Deno.test("PendingSyns: a SYN waits until taken, the oldest goes first, counted", async (t) => {
  await t.step("taken once, by number and by string key", () => {
    const p = new PendingSyns(4);
    p.add(1.5e14, "t_num", 0);
    p.add("2001:db8::1|443|2001:db8::2|80", "t_str", 0);
    assertEquals(p.size, 2);
    assertEquals(p.take(1.5e14), "t_num");
    assertEquals(p.take(1.5e14), undefined, "taken: gone");
    assertEquals(p.take("2001:db8::1|443|2001:db8::2|80"), "t_str");
    assertEquals([p.size, p.dropped], [0, 0], "nothing dropped: both were taken");
  });
  await t.step("a second SYN on a key replaces its JA4T, keeping one entry", () => {
    const p = new PendingSyns(4);
    p.add(7, "first", 0);
    p.add(7, "retransmit", 1);
    assertEquals(p.size, 1);
    assertEquals(p.take(7), "retransmit");
  });
  await t.step("full: each new SYN drops the oldest waiting one", () => {
    const p = new PendingSyns(3);
    for (const k of [1, 2, 3, 4, 5]) p.add(k, `t${k}`, k);
    assertEquals([p.size, p.dropped], [3, 2]);
    assertEquals([1, 2, 3, 4, 5].map((k) => p.take(k)), [undefined, undefined, "t3", "t4", "t5"]);
  });
  await t.step("a taken slot is passed over when the ring turns (not counted as dropped)", () => {
    const p = new PendingSyns(2);
    p.add(1, "a", 0);
    assertEquals(p.take(1), "a");
    p.add(2, "b", 1);
    p.add(3, "c", 2); // the ring turns past 1's slot, taken already
    p.add(1, "a2", 3); // key 1 again, in a new slot; drops 2
    assertEquals([p.size, p.dropped], [2, 1]);
    assertEquals([p.take(1), p.take(2), p.take(3)], ["a2", undefined, "c"]);
  });
  await t.step(
    "expire drops what arrived before now - idle, oldest first, and stops at the first younger",
    () => {
      const p = new PendingSyns(8);
      p.add(1, "a", 100);
      p.add(2, "b", 200);
      p.add(3, "c", 300);
      p.expire(350, 100); // arrived at or before 250
      assertEquals([p.size, p.dropped], [1, 2]);
      assertEquals(p.take(3), "c");
      p.delete(3);
      assertEquals(p.size, 0);
    },
  );
  await t.step("a capacity below 1 is refused", () => {
    assertThrows(() => new PendingSyns(0), RangeError);
  });
});
