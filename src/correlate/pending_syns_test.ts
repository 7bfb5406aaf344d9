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
  await t.step(
    "the ring starts small and doubles up to capacity, keeping order and every waiting key",
    () => {
      const p = new PendingSyns(16, 2);
      assertEquals(p.slots, 2);
      p.add(100, "x", 0);
      assertEquals(p.take(100), "x"); // a taken slot the growth passes over
      for (let k = 1; k <= 10; k++) p.add(k, `t${k}`, k);
      p.add(100, "x2", 11); // taken before, waiting again in a later slot
      assertEquals([p.slots, p.size, p.dropped], [16, 11, 0]);
      for (let k = 11; k <= 16; k++) p.add(k, `t${k}`, k); // full at 16 slots: the oldest go now
      assertEquals(p.slots, 16, "never past capacity");
      assertEquals(p.take(100), "x2");
      const got = Array.from({ length: 16 }, (_, i) => p.take(i + 1));
      assertEquals(
        got.filter((v) => v === undefined).length,
        p.dropped,
        "what is not there was dropped, counted",
      );
      assertEquals(got.slice(-10), Array.from({ length: 10 }, (_, i) => `t${i + 7}`), "the newest all there");
    },
  );
  await t.step("growing a ring that has turned moves each waiting key's slot", () => {
    const p = new PendingSyns(8, 2);
    p.add(1, "t1", 0);
    p.add(2, "t2", 10);
    p.expire(5, 0); // 1 goes: the ring's oldest slot is free, and the next SYN turns the ring
    p.add(3, "t3", 20); // slot 0 of 2
    p.add(4, "t4", 30); // full: grows to 4, and 3 moves from slot 0 to slot 2
    assertEquals([p.slots, p.dropped], [4, 1]);
    assertEquals([p.take(1), p.take(2), p.take(3), p.take(4)], [undefined, "t2", "t3", "t4"]);
  });
  await t.step("SYNs answered in the order they came keep the ring at its first size", () => {
    const p = new PendingSyns(65536, 64);
    for (let k = 0; k < 10_000; k++) {
      p.add(k, "t", k);
      if (k >= 8) assertEquals(p.take(k - 8), "t"); // eight connections between SYN and request
    }
    assertEquals([p.slots, p.size, p.dropped], [64, 8, 0]);
  });
  await t.step("a capacity below 1 is refused", () => {
    assertThrows(() => new PendingSyns(0), RangeError);
  });
});
