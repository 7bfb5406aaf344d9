/**
 * Event readers. RingReader maps a BPF ring buffer itself and parses its records in JS (the fastest
 * consumer measured: no C→JS callback per record): drain with a budget per tick, a short timer while data
 * flows, and a `nonblocking` poll(2) on the map fd only when the ring is empty, so the event loop never
 * blocks and an idle agent sleeps in the kernel. PerfReader is the fallback for kernels without ring
 * buffers (libbpf perf_buffer, polled from a timer).
 */
import { BpfError, checkPtr, errno, libbpf, libc, pageSize } from "./ffi.ts";
import type { BpfMap } from "./object.ts";

const BUSY = 0x80000000;
const DISCARD = 0x40000000;
const LEN_MASK = 0x3fffffff;
const HDR = 8;
const STRONG_LOADS = Deno.build.arch === "x86_64";

export interface ReaderStats {
  /** Records handed to onRecord. */
  records: number;
  bytes: number;
  /** Records the producer discarded (bpf_ringbuf_discard). */
  discarded: number;
  /** Records lost in the kernel as the reader sees them (perf buffer "lost" notices); 0 for rings. */
  lost: number;
  /** Drain passes that found data, and idle waits in poll(2). */
  batches: number;
  polls: number;
  maxBatch: number;
  /** onRecord threw: the record is dropped and counted here. */
  callbackErrors: number;
  /** Ring records that ran past the end of the data area and were copied together (RingReader). */
  wrapped: number;
  /**
   * Most bytes found unread at the start of a drain pass (RingReader; 0 for perf buffers): how close the ring
   * came to full, i.e. whether capture.ring_size_mb has room for the reader's slowest pass.
   */
  maxBacklog: number;
}

/** RingReader calls onBatch every this many records of a drain pass too (a power of 2). */
export const MID_BATCH_RECORDS = 256;

export interface ReaderOptions {
  /**
   * Receives each record's bytes: a copy (safe to keep), or with `views` a view into the mapped ring, valid
   * only during the call (the space is handed back to the producer after the batch).
   */
  onRecord: (data: Uint8Array) => void;
  /**
   * RingReader only, instead of onRecord: each record as (the whole mapped data area, one DataView of it made
   * once, the record's offset, its length): no view is allocated per record. Valid only during the call.
   */
  onRecordAt?: (area: Uint8Array, dv: DataView, offset: number, length: number) => void;
  /**
   * Called after each drain pass that consumed records (both readers), and by RingReader every
   * MID_BATCH_RECORDS records within one: the consumer hands on what the batch produced while it is young
   * (rows kept until a 100 ms timer outlive V8's young generation and are promoted, copied and later swept:
   * most of the agent's GC work; a pass of thousands of records allocates more than the young generation
   * holds, and its first rows lived through a scavenge in the middle of it).
   */
  onBatch?: () => void;
  /** Hand out views instead of copies (RingReader only): no allocation per record; the consumer copies what it keeps. */
  views?: boolean;
  /** Records per tick before yielding to the event loop (default 8192). */
  budget?: number;
  /**
   * Longest timer between drains while data flows, ms (RingReader default 50, shorter when the rate seen would
   * fill 1/16 of the ring sooner; PerfReader default 10). Each wake-up costs the agent tens of µs (about 100 µs
   * in a VM), so under load the wake-ups, not the records, decide much of its CPU: 5 ms cost ~1-2 µs per request
   * at 13k req/s here (docs/performance.md).
   */
  intervalMs?: number;
  /**
   * Upper bound of one idle poll(2), ms (RingReader default 200: the agent's BPF side wakes the reader only
   * once data backs up, so this bounds how long a trickle waits — rows are held longer than that for their
   * facts anyway — and an idle agent wakes 5 times a second; PerfReader default 1000); close() wakes it at once.
   */
  idlePollMs?: number;
}

type ResolvedOptions =
  & Required<Omit<ReaderOptions, "onBatch" | "onRecordAt">>
  & Pick<ReaderOptions, "onBatch" | "onRecordAt">;

export interface EventReader {
  readonly kind: "ringbuf" | "perfbuf";
  readonly stats: ReaderStats;
  start(): void;
  /** Drains what is there now, synchronously (tests, shutdown). Returns records consumed. */
  drain(budget?: number): number;
  close(): Promise<void>;
}

function newStats(): ReaderStats {
  return {
    records: 0,
    bytes: 0,
    discarded: 0,
    lost: 0,
    batches: 0,
    polls: 0,
    maxBatch: 0,
    callbackErrors: 0,
    wrapped: 0,
    maxBacklog: 0,
  };
}

const MAP_FAILED = 0xffffffffffffffffn;
/** Unread bytes after a batch above which the reader goes on at once instead of waiting its interval. */
const BACKLOG_BYTES = 16 * 1024;
function mmapChecked(len: number, prot: number, fd: number, off: number, what: string): Deno.PointerObject {
  const p = libc().mmap(null, BigInt(len), prot, 1, /* MAP_SHARED */ fd, BigInt(off));
  if (p === null || BigInt(Deno.UnsafePointer.value(p)) === MAP_FAILED) {
    throw new BpfError("mmap", errno(), what);
  }
  return p;
}

type Timer = ReturnType<typeof setTimeout>;

/**
 * The wait before the next drain while data flows: `maxMs`, or less when `bytes` read after `sinceMs` say the
 * ring (of `ringSize` bytes) would be 1/16 full sooner; at least 1 ms.
 */
export function batchIntervalMs(maxMs: number, ringSize: number, bytes: number, sinceMs: number): number {
  const bytesPerMs = bytes / Math.max(sinceMs, 1);
  return Math.max(1, Math.min(maxMs, Math.floor(ringSize / 16 / bytesPerMs)));
}

export class RingReader implements EventReader {
  readonly kind = "ringbuf" as const;
  readonly stats = newStats();
  readonly size: number;
  #fd: number;
  #efd: number;
  #page: number;
  #consPtr: Deno.PointerObject | null;
  #prodPtr: Deno.PointerObject | null;
  #consPos: BigUint64Array;
  #prodU32: Uint32Array;
  #data: Uint8Array;
  #dataI32: Int32Array;
  #dataView: DataView;
  #cons: number;
  #opts: ResolvedOptions;
  #timer: Timer | undefined;
  #inflight: Promise<unknown> | undefined;
  #pollfds = new Uint8Array(16);
  #state: "new" | "running" | "closing" | "closed" = "new";

  constructor(map: BpfMap | { fd: number; maxEntries: number; name: string }, opts: ReaderOptions) {
    const fd = map.fd;
    if (fd < 0) throw new BpfError("RingReader", 9, `${map.name} has no fd (object not loaded?)`);
    this.size = map.maxEntries;
    this.#opts = { budget: 8192, intervalMs: 50, idlePollMs: 200, views: false, ...opts };
    this.#page = pageSize();
    const c = libc();
    // Our own fd: the reader outlives nothing, but an in-flight poll(2) must never see a reused fd number.
    this.#fd = c.dup(fd);
    if (this.#fd < 0) throw new BpfError("dup", errno(), map.name);
    this.#efd = c.eventfd(0, 0o2004000 /* EFD_CLOEXEC|EFD_NONBLOCK */);
    if (this.#efd < 0) {
      c.close(this.#fd);
      throw new BpfError("eventfd", errno());
    }
    let consPtr: Deno.PointerObject | null = null;
    let prodPtr: Deno.PointerObject;
    try {
      // Consumer page rw at 0; producer page then the data area, ro. The kernel maps the data area twice in a
      // row so a record that wraps reads contiguously; libbpf maps both copies, and every page of a ring mapping
      // is present from the start, so the agent's RSS counted the ring twice (32 MiB for the default 16 MiB).
      // One copy is mapped here; the few records that wrap are copied together (#wrapped).
      consPtr = mmapChecked(this.#page, 3, this.#fd, 0, `${map.name} consumer page`);
      prodPtr = mmapChecked(this.#page + this.size, 1, this.#fd, this.#page, `${map.name} data`);
    } catch (e) {
      if (consPtr) c.munmap(consPtr, BigInt(this.#page));
      c.close(this.#fd);
      c.close(this.#efd);
      throw e;
    }
    this.#consPtr = consPtr;
    this.#prodPtr = prodPtr;
    const consAb = Deno.UnsafePointerView.getArrayBuffer(consPtr, this.#page);
    const prodAb = Deno.UnsafePointerView.getArrayBuffer(prodPtr, this.#page + this.size);
    this.#consPos = new BigUint64Array(consAb, 0, 1);
    this.#prodU32 = new Uint32Array(prodAb, 0, 2);
    this.#data = new Uint8Array(prodAb, this.#page, this.size);
    this.#dataI32 = new Int32Array(prodAb, this.#page, this.size >> 2);
    this.#dataView = new DataView(prodAb, this.#page, this.size);
    this.#cons = Number(Atomics.load(this.#consPos, 0));
    const dv = new DataView(this.#pollfds.buffer);
    dv.setInt32(0, this.#fd, true);
    dv.setInt16(4, 1, /* POLLIN */ true);
    dv.setInt32(8, this.#efd, true);
    dv.setInt16(12, 1, true);
  }

  /** Bytes written by the producer and not yet consumed. */
  pending(): number {
    return this.#state === "closed" ? 0 : this.#producerPos() - this.#cons;
  }

  #producerPos(): number {
    // A 64-bit position read as two 32-bit halves: retry if the high half moved in between.
    for (;;) {
      const hi = Atomics.load(this.#prodU32, 1);
      const lo = Atomics.load(this.#prodU32, 0);
      if (Atomics.load(this.#prodU32, 1) === hi) return hi * 0x100000000 + lo;
    }
  }

  drain(budget = this.#opts.budget): number {
    if (this.#state === "closed") return 0;
    const data = this.#data, i32 = this.#dataI32, s = this.stats, cb = this.#opts.onRecord;
    const views = this.#opts.views === true;
    const at = this.#opts.onRecordAt, dv = this.#dataView;
    let cons = this.#cons;
    let prod = this.#producerPos();
    if (prod - cons > s.maxBacklog) s.maxBacklog = prod - cons;
    let n = 0;
    while (n < budget) {
      if (cons >= prod) {
        prod = this.#producerPos();
        if (cons >= prod) break;
      }
      // cons can pass 2^32: modulo on doubles is exact below 2^53.
      const off = cons % this.size;
      // Atomics.load on this external (non-shared) buffer cost ~1.3 µs per record here: on x86 (TSO) a
      // plain load after the acquire read of the producer position is ordered; elsewhere keep Atomics.
      const hdr = (STRONG_LOADS ? i32[off >> 2] : Atomics.load(i32, off >> 2)) >>> 0;
      if (hdr & BUSY) break; // reserved, not yet committed: stop here, keep order
      const len = hdr & LEN_MASK;
      if (hdr & DISCARD) {
        s.discarded++;
      } else {
        s.records++;
        s.bytes += len;
        try {
          // Headers are 8-byte aligned and never wrap; a payload may run past the end of the one mapped copy.
          if (off + HDR + len > this.size) {
            const w = this.#wrapped(off + HDR, len);
            if (at !== undefined) at(w, this.#wrapDv!, 0, len);
            else cb(views ? w.subarray(0, len) : w.slice(0, len));
          } else if (at !== undefined) at(data, dv, off + HDR, len);
          else cb(views ? data.subarray(off + HDR, off + HDR + len) : data.slice(off + HDR, off + HDR + len));
        } catch {
          s.callbackErrors++;
        }
      }
      cons += (len + HDR + 7) & ~7;
      if ((++n & (MID_BATCH_RECORDS - 1)) === 0) this.#opts.onBatch?.();
    }
    if (n > 0) {
      // Payloads were copied (or their views used) above: only now may the producer reuse the space.
      this.#cons = cons;
      Atomics.store(this.#consPos, 0, BigInt(cons));
      s.batches++;
      if (n > s.maxBatch) s.maxBatch = n;
      this.#opts.onBatch?.();
    }
    return n;
  }

  #wrap = new Uint8Array(0);
  #wrapDv: DataView | undefined;

  /** The record of `len` bytes at `start` that runs past the end of the data area, copied into one buffer. */
  #wrapped(start: number, len: number): Uint8Array {
    if (this.#wrap.length < len) {
      this.#wrap = new Uint8Array(Math.max(len, 4096));
      this.#wrapDv = new DataView(this.#wrap.buffer);
    }
    const head = this.size - start;
    this.#wrap.set(this.#data.subarray(start, this.size), 0);
    this.#wrap.set(this.#data.subarray(0, len - head), head);
    this.stats.wrapped++;
    return this.#wrap;
  }

  start(): void {
    if (this.#state !== "new") return;
    this.#state = "running";
    this.#tick();
  }

  /** When the last drain started (performance.now()), for the rate that bounds the next interval. */
  #lastDrainMs = 0;

  #tick = (): void => {
    this.#timer = undefined;
    if (this.#state !== "running") return;
    const budget = this.#opts.budget;
    const now = performance.now(), from = this.#cons;
    const n = this.drain(budget);
    const sinceMs = now - this.#lastDrainMs;
    this.#lastDrainMs = now;
    // Backlog (a full budget, or more arrived while this batch was handled): yield to the event loop, then
    // continue. Sleeping the batching interval here would leave the ring unread for it after every batch
    // and, under a sustained load, fill it.
    if (n >= budget || (n > 0 && this.pending() >= BACKLOG_BYTES)) this.#timer = setTimeout(this.#tick, 1);
    else if (n > 0) {
      // Data flows: batch. Wait as long as the options allow, but no longer than the rate just seen takes to
      // fill 1/16 of the ring (where the BPF side would wake a poller).
      const ms = batchIntervalMs(this.#opts.intervalMs, this.size, this.#cons - from, sinceMs);
      this.#timer = setTimeout(this.#tick, ms);
    } else this.#idleWait();
  };

  #idleWait(): void {
    this.stats.polls++;
    // The kernel reports the ring readable as soon as the producer is ahead of our position, so a record
    // committed between the drain and this call is not missed.
    const p = libc().poll_nb(this.#pollfds, 2n, this.#opts.idlePollMs);
    this.#inflight = p;
    p.then(() => {
      this.#inflight = undefined;
      if (this.#state === "running") this.#tick();
    }, () => {
      this.#inflight = undefined;
    });
  }

  /** Stops, drains what is left, waits for an in-flight poll(2), then unmaps. No view is used after. */
  async close(): Promise<void> {
    if (this.#state === "closed" || this.#state === "closing") return;
    const wasRunning = this.#state === "running";
    this.#state = "closing";
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#inflight) {
      libc().write(this.#efd, new Uint8Array(new BigUint64Array([1n]).buffer), 8n);
      await this.#inflight;
    }
    if (wasRunning) this.#drainAll();
    this.#state = "closed";
    const c = libc();
    c.munmap(this.#prodPtr, BigInt(this.#page + this.size));
    c.munmap(this.#consPtr, BigInt(this.#page));
    this.#prodPtr = this.#consPtr = null;
    this.#data = this.#dataI32 = new Uint8Array(0) as never;
    this.#dataView = new DataView(new ArrayBuffer(0));
    c.close(this.#fd);
    c.close(this.#efd);
  }

  #drainAll(): void {
    const save = this.#state;
    this.#state = "running";
    for (let i = 0; i < 64 && this.drain() > 0; i++);
    this.#state = save;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Fallback for kernels without BPF ring buffers: libbpf's perf buffer (one ring per CPU). libbpf calls
 * back per record on this thread during perf_buffer__poll(…, 0), run from a timer.
 */
export class PerfReader implements EventReader {
  readonly kind = "perfbuf" as const;
  readonly stats = newStats();
  #pb: Deno.PointerObject | null;
  #sample: Deno.UnsafeCallback<{ parameters: ["pointer", "i32", "pointer", "u32"]; result: "void" }>;
  #lost: Deno.UnsafeCallback<{ parameters: ["pointer", "i32", "u64"]; result: "void" }>;
  #opts: ResolvedOptions;
  #timer: ReturnType<typeof setInterval> | undefined;
  #batch = 0;

  constructor(map: BpfMap | { fd: number; name: string }, opts: ReaderOptions, pagesPerCpu = 64) {
    this.#opts = { budget: 8192, intervalMs: 10, idlePollMs: 1000, views: false, ...opts };
    const s = this.stats;
    this.#sample = new Deno.UnsafeCallback(
      { parameters: ["pointer", "i32", "pointer", "u32"], result: "void" } as const,
      (_ctx, _cpu, data, size) => {
        if (!data) return;
        const copy = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(data, size).slice(0));
        s.records++;
        s.bytes += size;
        this.#batch++;
        try {
          this.#opts.onRecord(copy);
        } catch {
          s.callbackErrors++;
        }
      },
    );
    this.#lost = new Deno.UnsafeCallback(
      { parameters: ["pointer", "i32", "u64"], result: "void" } as const,
      (_ctx, _cpu, cnt) => {
        s.lost += Number(cnt);
      },
    );
    const p = libbpf().perf_buffer__new(
      map.fd,
      BigInt(pagesPerCpu),
      this.#sample.pointer,
      this.#lost.pointer,
      null,
      null,
    );
    try {
      this.#pb = checkPtr("perf_buffer__new", p, map.name);
    } catch (e) {
      this.#sample.close();
      this.#lost.close();
      throw e;
    }
  }

  drain(): number {
    if (!this.#pb) return 0;
    this.#batch = 0;
    const rc = libbpf().perf_buffer__poll(this.#pb, 0);
    if (rc < 0 && rc !== -4 /* EINTR */) throw new BpfError("perf_buffer__poll", -rc);
    if (this.#batch) {
      this.stats.batches++;
      if (this.#batch > this.stats.maxBatch) this.stats.maxBatch = this.#batch;
      this.#opts.onBatch?.();
    }
    return this.#batch;
  }

  start(): void {
    if (this.#timer !== undefined || !this.#pb) return;
    this.#timer = setInterval(() => this.drain(), this.#opts.intervalMs);
  }

  close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#pb) {
      this.drain();
      libbpf().perf_buffer__free(this.#pb);
      this.#pb = null;
      // Callbacks go only after the buffer that calls them.
      this.#sample.close();
      this.#lost.close();
    }
    return Promise.resolve();
  }
}
