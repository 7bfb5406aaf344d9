import { assert, assertEquals, assertGreater } from "../testing/asserts.ts";
import { BpfObject, u32Key } from "./object.ts";
import { batchIntervalMs, MID_BATCH_RECORDS, PerfReader, RingReader } from "./ringbuf.ts";
import { probeTestObject, requireRoot } from "../../tests/fixtures/bpf/fixture.ts";
import { getppidTimes } from "../../tests/fixtures/bpf/trigger.ts";

// struct event of probe_test.bpf.c: seq@0 u64, pid@8, tid@12, ts@16 u64, cpu@24, len@28, data[32]@32.
function seqOf(rec: Uint8Array): number {
  return Number(new DataView(rec.buffer, rec.byteOffset).getBigUint64(0, true));
}
function pidOf(rec: Uint8Array): number {
  return new DataView(rec.buffer, rec.byteOffset).getUint32(8, true);
}

async function loaded(outputMode: number, ringBytes = 1 << 16): Promise<BpfObject> {
  requireRoot();
  const o = BpfObject.openMem(await probeTestObject(), "probe_test");
  o.setGlobals({ target_tgid: Deno.pid, output_mode: outputMode });
  o.setRingSize("rb", ringBytes);
  for (const p of ["pt_fexit", "pt_kret", "pt_uprobe", "pt_tc", "pt_rawtp_exit"]) o.setAutoload(p, false);
  o.load();
  o.program("pt_tp_getppid").attach();
  return o;
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
}

Deno.test("RingReader: every event of a real trigger arrives, in order, with no drops", async () => {
  const o = await loaded(1);
  const seqs: number[] = [];
  let badPid = 0, batchEnds = 0, seenAtBatchEnd = 0;
  const r = new RingReader(o.map("rb"), {
    onRecord: (rec) => {
      seqs.push(seqOf(rec));
      if (pidOf(rec) !== Deno.pid) badPid++;
    },
    onBatch: () => {
      batchEnds++;
      seenAtBatchEnd = seqs.length;
    },
  });
  try {
    r.start();
    // 3000 events in bursts smaller than the 64 KiB ring (72-byte records): the reader keeps up.
    for (let i = 0; i < 30; i++) {
      getppidTimes(100);
      await new Promise((res) => setTimeout(res, 3));
    }
    await until(() => seqs.length >= 3000, 2000);
    assertEquals(o.map("counters").sumU64(u32Key(0)), 0n, "reserve failures");
    assertEquals(seqs.length, 3000);
    assert(seqs.every((s, i) => s === i), "records in producer order");
    assertEquals(badPid, 0);
    assertEquals(r.stats.records, 3000);
    assertEquals(r.stats.bytes, 3000 * 64);
    assertGreater(r.stats.polls, 0, "went idle in poll(2) at least once");
    // After every pass, and within a pass every MID_BATCH_RECORDS records (a reader that fell behind).
    assert(batchEnds >= r.stats.batches, `onBatch ${batchEnds} times for ${r.stats.batches} batches`);
    assert(batchEnds <= r.stats.batches + Math.floor(3000 / MID_BATCH_RECORDS), "no more than that");
    assertEquals(seenAtBatchEnd, 3000, "the last batch end saw every record");
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("RingReader: a long drain pass calls onBatch every MID_BATCH_RECORDS records and at its end", async () => {
  const o = await loaded(1);
  let seen = 0;
  const at: number[] = [];
  const r = new RingReader(o.map("rb"), { onRecord: () => seen++, onBatch: () => at.push(seen) });
  try {
    // 700 records (72 bytes each) wait in the 64 KiB ring; one pass takes them all.
    getppidTimes(700);
    assertEquals(r.drain(), 700);
    assertEquals(at, [MID_BATCH_RECORDS, 2 * MID_BATCH_RECORDS, 700]);
    assertEquals(r.stats.batches, 1, "still one batch");
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("RingReader: onRecordAt hands out the same records in place (offset into the mapped area)", async () => {
  const o = await loaded(1);
  const seqs: number[] = [];
  let wrongLen = 0;
  const r = new RingReader(o.map("rb"), {
    onRecord: () => {
      throw new Error("onRecordAt takes precedence");
    },
    onRecordAt: (area, dv, off, len) => {
      seqs.push(Number(dv.getBigUint64(off, true)));
      if (len !== 64 || area[off + 8] !== (Deno.pid & 0xff)) wrongLen++;
    },
  });
  try {
    r.start();
    for (let i = 0; i < 10; i++) {
      getppidTimes(100);
      await new Promise((res) => setTimeout(res, 3));
    }
    await until(() => seqs.length >= 1000, 2000);
    assertEquals(seqs.length, 1000);
    assert(seqs.every((s, i) => s === i), "records in producer order");
    assertEquals(wrongLen, 0, "length and pid byte at the offset");
    assertEquals(r.stats.callbackErrors, 0);
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("RingReader: a full ring drops in the kernel; drops are counted; the rest is intact", async () => {
  const o = await loaded(1, 4096);
  const seqs: number[] = [];
  const r = new RingReader(o.map("rb"), { onRecord: (rec) => seqs.push(seqOf(rec)) });
  try {
    getppidTimes(500); // the reader is not started: a 4 KiB ring holds 56 records
    const drops = Number(o.map("counters").sumU64(u32Key(0)));
    assertGreater(drops, 0, "reserve failures counted per CPU");
    assertEquals(r.pending(), 56 * 72);
    assertEquals(r.stats.maxBacklog, 0, "no drain pass yet");
    assertEquals(r.drain(10), 10, "the budget bounds one drain");
    assertEquals(r.stats.maxBacklog, 56 * 72, "the full ring's backlog seen by that pass");
    r.drain();
    assertEquals(r.stats.maxBacklog, 56 * 72, "a high-water mark: the smaller backlog later leaves it");
    assertEquals(seqs.length + drops, 500, "every event either arrived or was counted as dropped");
    assert(seqs.every((s, i) => s === i), "the first records survive");
    // After the drain the ring takes events again, and across the wrap-around.
    getppidTimes(40);
    r.drain();
    assertEquals(seqs.length, 56 + 40);
    assertEquals(seqs.slice(56), Array.from({ length: 40 }, (_, i) => 500 + i));
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("RingReader: records that wrap past the end of the mapped data area arrive whole (both callbacks)", async (t) => {
  for (const mode of ["onRecordAt", "onRecord"] as const) {
    await t.step(mode, async () => {
      const o = await loaded(1, 4096);
      const seqs: number[] = [];
      let bad = 0;
      const check = (dv: DataView, off: number, len: number) => {
        seqs.push(Number(dv.getBigUint64(off, true)));
        // pid, tid and the payload's length field of probe_test's event: garbage if the halves were misjoined.
        if (len !== 64 || dv.getUint32(off + 8, true) !== Deno.pid || dv.getUint32(off + 28, true) > 32) {
          bad++;
        }
      };
      const r = new RingReader(o.map("rb"), {
        onRecord: (rec) => check(new DataView(rec.buffer, rec.byteOffset, rec.byteLength), 0, rec.length),
        ...(mode === "onRecordAt"
          ? { onRecordAt: (_a: Uint8Array, dv: DataView, off: number, len: number) => check(dv, off, len) }
          : {}),
      });
      try {
        // 72-byte records in a 4 KiB ring: every 57th straddles the end; 20 rounds of 50 wrap many times.
        for (let i = 0; i < 20; i++) {
          getppidTimes(50);
          r.drain();
        }
        assertEquals(seqs.length, 1000);
        assert(seqs.every((s, i) => s === i), "records in producer order, none lost");
        assertEquals(bad, 0, "every record's fields intact");
        assertGreater(r.stats.wrapped, 10, "records did wrap");
        assertEquals(o.map("counters").sumU64(u32Key(0)), 0n, "no reserve failures");
      } finally {
        await r.close();
        o.close();
      }
    });
  }
});

Deno.test("RingReader: idle wait wakes on the first event; close ends an in-flight poll at once", async () => {
  const o = await loaded(1);
  let got = 0;
  const r = new RingReader(o.map("rb"), { onRecord: () => got++, idlePollMs: 5000 });
  try {
    r.start();
    await new Promise((res) => setTimeout(res, 100));
    assert(r.stats.polls <= 2, `idle: ${r.stats.polls} polls in 100 ms`);
    const t0 = performance.now();
    getppidTimes(1);
    await until(() => got === 1, 1000);
    assertEquals(got, 1);
    assert(performance.now() - t0 < 200, "woken by the kernel, not by the poll timeout");
    await new Promise((res) => setTimeout(res, 50));
    const t1 = performance.now();
    await r.close();
    assert(performance.now() - t1 < 500, "close does not wait for the 5 s poll timeout");
    assertEquals(r.drain(), 0, "a closed reader touches no mapping");
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("PerfReader: the fallback path delivers the same events", async () => {
  const o = await loaded(4);
  const seqs: number[] = [];
  const r = new PerfReader(o.map("pb"), { onRecord: (rec) => seqs.push(seqOf(rec)) }, 8);
  try {
    r.start();
    getppidTimes(200);
    await until(() => seqs.length >= 200, 2000);
    assertEquals(seqs.length, 200);
    assertEquals([...seqs].sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i));
    assertEquals(r.stats.lost, 0);
  } finally {
    await r.close();
    o.close();
  }
});

Deno.test("batchIntervalMs: the longest batch unless the rate would fill 1/16 of the ring sooner", async (t) => {
  const MiB = 1 << 20;
  const cases: [string, [number, number, number, number], number][] = [
    ["a trickle waits the whole interval", [50, 8 * MiB, 4096, 50], 50],
    ["12 MB/s into 8 MiB: 512 KiB take 43 ms", [50, 8 * MiB, 12_000, 1], 43],
    ["a flood that fills 1/16 in under 1 ms: 1 ms", [50, 8 * MiB, 2 * MiB, 1], 1],
    ["a small ring shortens the wait", [50, 256 * 1024, 12_000, 1], 1],
    ["nothing read since a long idle wait", [50, 8 * MiB, 0, 10_000], 50],
  ];
  for (const [name, [max, size, bytes, since], want] of cases) {
    await t.step(name, () => assertEquals(batchIntervalMs(max, size, bytes, since), want));
  }
});
