/**
 * Per-event consumer cost: our own-mmap RingReader vs libbpf's ring_buffer__consume with a JS callback,
 * on the same events in one run. The fixture program writes every getppid(2) event into two rings (rb,
 * rb2); both are pre-filled, then each consumer drains its ring doing the same work (copy the payload,
 * read one field). Prints ns/event for both and the ratio. Needs root and clang.
 *   deno run -A bench/ringbuf_bench.ts        (also runs under `deno bench`)
 */
import { BpfObject, u32Key } from "../src/bpf/object.ts";
import { RingReader } from "../src/bpf/ringbuf.ts";
import { libbpf } from "../src/bpf/ffi.ts";
import { probeTestObject } from "../tests/fixtures/bpf/fixture.ts";
import { getppidTimes } from "../tests/fixtures/bpf/trigger.ts";

const EVENTS = 200_000;
const RING = 32 << 20;

export async function measure(rounds = 3): Promise<{ ownNs: number; libbpfNs: number; ratio: number }> {
  const o = BpfObject.openMem(await probeTestObject(), "probe_test");
  o.setGlobals({ target_tgid: Deno.pid, output_mode: 3 });
  o.setRingSize("rb", RING);
  o.setRingSize("rb2", RING);
  for (const p of ["pt_fexit", "pt_kret", "pt_uprobe", "pt_tc", "pt_rawtp_exit"]) o.setAutoload(p, false);
  o.load();
  o.program("pt_tp_getppid").attach();
  let sink = 0;
  const own = new RingReader(o.map("rb"), {
    onRecord: (rec) => {
      sink += rec[0];
    },
  });
  const cb = new Deno.UnsafeCallback(
    { parameters: ["pointer", "pointer", "usize"], result: "i32" } as const,
    (_ctx, data, size) => {
      const rec = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(data!, Number(size)).slice(0));
      sink += rec[0];
      return 0;
    },
  );
  const l = libbpf();
  const rb = l.ring_buffer__new(o.map("rb2").fd, cb.pointer, null, null);
  if (!rb) throw new Error("ring_buffer__new failed");
  const own_ns: number[] = [], lib_ns: number[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      getppidTimes(EVENTS);
      const drops = o.map("counters").sumU64(u32Key(0)) + o.map("counters").sumU64(u32Key(7));
      if (drops) throw new Error(`rings overflowed (${drops} drops): lower EVENTS`);
      let t = performance.now();
      let n = 0;
      for (let k = 0; n < EVENTS && k < 1000; k++) n += own.drain(Infinity);
      if (n !== EVENTS) throw new Error(`own reader consumed ${n}, expected ${EVENTS}`);
      own_ns.push(((performance.now() - t) * 1e6) / n);
      t = performance.now();
      const m = l.ring_buffer__consume(rb);
      lib_ns.push(((performance.now() - t) * 1e6) / m);
      if (m !== EVENTS) throw new Error(`libbpf consumed ${m}, expected ${EVENTS}`);
    }
  } finally {
    l.ring_buffer__free(rb);
    cb.close();
    await own.close();
    o.close();
  }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
  void sink;
  return { ownNs: med(own_ns), libbpfNs: med(lib_ns), ratio: med(lib_ns) / med(own_ns) };
}

function report(r: { ownNs: number; libbpfNs: number; ratio: number }): void {
  console.log(
    `ring consumer, ${EVENTS} pre-filled 64-byte events: own mmap ${r.ownNs.toFixed(0)} ns/event, ` +
      `libbpf ring_buffer__consume + JS callback ${r.libbpfNs.toFixed(0)} ns/event: own reader ${
        r.ratio.toFixed(1)
      }x cheaper`,
  );
}

if (import.meta.main) {
  report(await measure());
} else {
  Deno.bench({
    name: "ringbuf consumer: own mmap vs libbpf callback (ratio printed)",
    n: 1,
    warmup: 0,
    async fn() {
      report(await measure(1));
    },
  });
}
