/**
 * Loading the real BPF object for a test through the product's own user side (BpfObject, RingReader,
 * PerfReader, decodeEvent): a chosen program set, globals, ring size or perf buffer, traced pids, and a
 * collector that keeps every record with its raw length. Drop counters summed per reason.
 */
import { embeddedObject } from "../../src/bpf/embedded.ts";
import { type AttachHandle, BpfObject, type GlobalValue, u32Key } from "../../src/bpf/object.ts";
import { type EventReader, PerfReader, RingReader } from "../../src/bpf/ringbuf.ts";
import { type CaptureEvent, decodeEvent } from "../../src/bpf/events.ts";
import { DropReason, ServerKind } from "../../src/bpf/layout.gen.ts";
import { SSL_UPROBES } from "../../src/bpf/plan.ts";
import { ensureTracefs } from "../../src/bpf/tracefs.ts";
import { HarnessError, requireRoot } from "./proc.ts";

/**
 * How one enabled program attaches: as its SEC() says, as a uprobe on a function of a file, or as a tc
 * ingress filter on an interface (a handle/priority of its own, so an agent's filter on the same hook is
 * left alone; default 0x4a3b).
 */
export type TestAttach =
  | { program: string }
  | { program: string; path: string; func: string; retprobe: boolean }
  | { program: string; tc: string; handle?: number };

export interface TestLoaderOptions {
  /** In attach order (read programs before the SSL uprobes, entries before returns). */
  attach: TestAttach[];
  /** Processes to trace (traced_pids), with their server kind. */
  pids: number[];
  kind?: number;
  /** false: use_ringbuf = 0, `events` not created, events read from `events_perf`. Default true. */
  ringbuf?: boolean;
  /** Ring buffer bytes (power of two ≥ page); default 1 MiB. */
  ringBytes?: number;
  /** Perf buffer pages per CPU; default 64. */
  perfPages?: number;
  globals?: Record<string, GlobalValue>;
  /** Server ports tc_ingress watches (`listen_ports`). */
  listenPorts?: number[];
}

/** One record as the reader handed it over, and its decoding. */
export interface Received {
  /** Length of the record the reader delivered (perf pads it; the ring does not). */
  recordLength: number;
  event: CaptureEvent;
}

export class TestLoader implements AsyncDisposable {
  readonly received: Received[] = [];
  readonly links: AttachHandle[] = [];
  /** Records decodeEvent refused (each a message): a test expects none. */
  readonly decodeErrors: string[] = [];
  reader!: EventReader;
  private constructor(readonly obj: BpfObject, readonly ringbuf: boolean) {}

  /** Opens, configures, loads, creates the reader (not started: drain() or reader.start()), attaches. */
  static open(o: TestLoaderOptions): TestLoader {
    requireRoot("loading BPF programs");
    // Tracepoints attach by name through tracefs, which a host as it boots may not have mounted yet.
    const tracefs = ensureTracefs();
    if (!tracefs.path) throw new HarnessError(`attaching tracepoints needs tracefs: ${tracefs.error}`);
    const ringbuf = o.ringbuf ?? true;
    const obj = BpfObject.openMem(embeddedObject());
    const t = new TestLoader(obj, ringbuf);
    try {
      const enabled = new Set(o.attach.map((a) => a.program));
      for (const p of obj.programs()) p.autoload = enabled.has(p.name);
      if (ringbuf) obj.setRingSize("events", o.ringBytes ?? 1 << 20);
      else obj.map("events").setAutocreate(false);
      obj.setGlobals({ self_tgid: Deno.pid, use_ringbuf: ringbuf, ...o.globals });
      obj.load();
      const pids = obj.map("traced_pids");
      for (const pid of o.pids) pids.update(u32Key(pid), u32Key(o.kind ?? ServerKind.NGINX));
      const ports = obj.map("listen_ports");
      for (const p of o.listenPorts ?? []) {
        ports.update(new Uint8Array([p & 0xff, p >> 8]), new Uint8Array([1]));
      }
      // The reader before the programs: a perf sample sent before perf_buffer__new has opened the CPU's
      // perf event fails (ENOENT) and is counted as a drop.
      const onRecord = (rec: Uint8Array) => {
        try {
          t.received.push({ recordLength: rec.length, event: decodeEvent(rec) });
        } catch (e) {
          t.decodeErrors.push(e instanceof Error ? e.message : String(e));
        }
      };
      t.reader = ringbuf
        ? new RingReader(obj.map("events"), { onRecord })
        : new PerfReader(obj.map("events_perf"), { onRecord }, o.perfPages ?? 64);
      for (const a of o.attach) {
        const prog = obj.program(a.program);
        t.links.push(
          "path" in a
            ? prog.attachUprobe({ path: a.path, funcName: a.func, retprobe: a.retprobe })
            : "tc" in a
            ? prog.attachTc({ iface: a.tc, handle: a.handle ?? 0x4a3b, priority: a.handle ?? 0x4a3b })
            : prog.attach(),
        );
      }
    } catch (e) {
      void t.reader?.close();
      obj.close();
      throw e;
    }
    return t;
  }

  get events(): CaptureEvent[] {
    return this.received.map((r) => r.event);
  }

  /** Detaches every program: no event is produced after this. */
  detach(): void {
    for (const l of this.links) l.close();
  }

  /** `drops` summed over the CPUs, by reason name; only non-zero reasons. */
  drops(): Record<string, number> {
    const m = this.obj.map("drops");
    const out: Record<string, number> = {};
    for (const [name, idx] of Object.entries(DropReason)) {
      if (name === "MAX") continue;
      const n = Number(m.sumU64(u32Key(idx)));
      if (n) out[name] = n;
    }
    return out;
  }

  /** Drains until the reader finds nothing (the reader must not be started). */
  drainAll(): number {
    let total = 0;
    for (let n = this.reader.drain(); n > 0; n = this.reader.drain()) total += n;
    return total;
  }

  async close(): Promise<void> {
    await this.reader?.close();
    this.obj.close();
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * The file a process maps whose name matches `name` (maps show the real file, e.g. libapr-1.so.0.7.2 for
 * the soname libapr-1.so.0): the exact inode its uprobes must be placed in.
 */
export function mappedLibrary(pid: number, name: RegExp): string {
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`);
  for (const line of maps.split("\n")) {
    const path = line.split(/\s+/).slice(5).join(" ");
    const base = path.slice(path.lastIndexOf("/") + 1);
    if (path.startsWith("/") && name.test(base)) return path;
  }
  throw new HarnessError(`process ${pid} maps no library matching ${name}`);
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** Everything an event says apart from its timestamp: equal keys mean byte-identical events. */
export function eventKey(e: CaptureEvent): string {
  const h = [
    e.type,
    e.hook,
    e.pid,
    e.tid,
    e.fd,
    e.comm,
    e.family,
    e.srcAddr,
    e.srcPort,
    e.dstAddr,
    e.dstPort,
  ];
  const tail = [e.total, e.offset, e.flags];
  switch (e.type) {
    case "data":
      return [...h, ...tail, e.pos, hex(e.bytes)].join("|");
    case "close":
      return [...h, ...tail, e.posRaw, e.posPlaintext].join("|");
    case "pkt":
      return [...h, ...tail, e.seq, hex(e.bytes)].join("|");
    case "syn":
      return [...h, ...tail, e.seq, e.window, e.ttl, e.ipLen, e.ipFlags, e.tcpFlags, hex(e.options)].join(
        "|",
      );
  }
}

/** The agent's SSL uprobe pairs (SSL_UPROBES) on one libssl, each entry before its return probe. */
export function sslPairs(libssl: string): TestAttach[] {
  return SSL_UPROBES.flatMap(([func, entry, ret]) => [
    { program: entry, path: libssl, func, retprobe: false },
    { program: ret, path: libssl, func, retprobe: true },
  ]);
}
