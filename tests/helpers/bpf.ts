/**
 * Loading the real BPF object for a test through the product's own user side (BpfObject, RingReader,
 * PerfReader, decodeEvent): a chosen program set, globals, ring size or perf buffer, traced pids, and a
 * collector that keeps every record with its raw length. Drop counters summed per reason.
 */
import { embeddedObject } from "../../src/bpf/embedded.ts";
import { type AttachHandle, BpfObject, type GlobalValue, u32Key } from "../../src/bpf/object.ts";
import { type EventReader, PerfReader, RingReader } from "../../src/bpf/ringbuf.ts";
import { type CaptureEvent, decodeEvent } from "../../src/bpf/events.ts";
import { DropReason, Family, FLOW_KEY, ServerKind, SYN_FACTS } from "../../src/bpf/layout.gen.ts";
import { formatIPv4, formatIPv6 } from "../../src/parse/addr.ts";
import { SSL_UPROBES } from "../../src/bpf/plan.ts";
import { ensureTracefs } from "../../src/bpf/tracefs.ts";
import { libbpf } from "../../src/bpf/ffi.ts";
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
        ports.update(u32Key(p), new Uint8Array([1]));
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
    case "data": {
      const s = e.syn;
      const syn = s ? [s.seq, s.window, s.ttl, s.ipLen, s.ipFlags, s.tcpFlags, hex(s.options)] : [];
      return [...h, ...tail, e.pos, hex(e.bytes), ...syn].join("|");
    }
    case "close":
      return [...h, ...tail, e.posRaw, e.posPlaintext].join("|");
    case "pkt":
      return [...h, ...tail, e.seq, hex(e.bytes)].join("|");
  }
}

/** A client SYN tc keeps in syn_facts until the server's first read of its connection takes it. */
export interface KeptSyn {
  srcAddr: string;
  srcPort: number;
  dstAddr: string;
  dstPort: number;
  window: number;
  options: Uint8Array;
}

/** Every SYN in the object's syn_facts map (decoded by the generated layouts). */
export function keptSyns(obj: BpfObject): KeptSyn[] {
  const map = obj.map("syn_facts"), K = FLOW_KEY.fields, V = SYN_FACTS.fields;
  const addr = (b: Uint8Array, family: number, at: number) =>
    family === Family.INET ? formatIPv4(b, at) : formatIPv6(b, at, "v4");
  const out: KeptSyn[] = [];
  for (const k of map.keys()) {
    const v = map.lookup(k);
    if (!v) continue; // taken meanwhile
    const kd = new DataView(k.buffer), vd = new DataView(v.buffer), family = k[K.family.offset];
    out.push({
      srcAddr: addr(k, family, K.saddr.offset),
      srcPort: kd.getUint16(K.sport.offset, true),
      dstAddr: addr(k, family, K.daddr.offset),
      dstPort: kd.getUint16(K.dport.offset, true),
      window: vd.getUint16(V.window.offset, true),
      options: v.slice(V.options.offset, V.options.offset + v[V.opt_len.offset]),
    });
  }
  return out;
}

/** The agent's SSL uprobe pairs (SSL_UPROBES) on one libssl, each entry before its return probe. */
export function sslPairs(libssl: string): TestAttach[] {
  return SSL_UPROBES.flatMap(([func, entry, ret]) => [
    { program: entry, path: libssl, func, retprobe: false },
    { program: ret, path: libssl, func, retprobe: true },
  ]);
}

/** A uprobe as the kernel holds it: its file (the path the inode is reached by now) and file offset. */
export interface KernelUprobe {
  file: string;
  offset: number;
  retprobe: boolean;
}

/** The id of a loaded program, from its fd's fdinfo. */
export function progIdOfFd(fd: number): number {
  const m = /^prog_id:\s*(\d+)/m.exec(Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`));
  if (!m) throw new HarnessError(`fd ${fd} is not a BPF program`);
  return Number(m[1]);
}

/**
 * The uprobe links of this process that run a program (by its fd), read back from the kernel
 * (bpf_link_info.perf_event.uprobe, kernel ≥ 6.6): what is really attached, not what the caller thinks.
 */
export function uprobeLinks(progFd: number): KernelUprobe[] {
  const id = progIdOfFd(progFd);
  const out: KernelUprobe[] = [];
  for (const e of Deno.readDirSync("/proc/self/fdinfo")) {
    let text: string;
    try {
      text = Deno.readTextFileSync(`/proc/self/fdinfo/${e.name}`);
    } catch {
      continue; // closed meanwhile (the readdir's own fd)
    }
    if (!/^link_type:/m.test(text) || Number(/^prog_id:\s*(\d+)/m.exec(text)?.[1]) !== id) continue;
    // struct bpf_link_info: type@0; perf_event.type@16; uprobe {file_name@24 (in: buffer), name_len@32,
    // offset@36}. BPF_LINK_TYPE_PERF_EVENT = 7; BPF_PERF_EVENT_UPROBE = 1, URETPROBE = 2.
    const info = new Uint8Array(128);
    const name = new Uint8Array(4096);
    const dv = new DataView(info.buffer);
    dv.setBigUint64(24, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(name))), true);
    dv.setUint32(32, name.length, true);
    const len = new Uint32Array([info.length]);
    const rc = libbpf().bpf_obj_get_info_by_fd(Number(e.name), info, new Uint8Array(len.buffer));
    if (rc < 0) throw new HarnessError(`bpf_obj_get_info_by_fd(${e.name}): ${rc}`);
    const pt = dv.getUint32(16, true);
    if (dv.getUint32(0, true) !== 7 || (pt !== 1 && pt !== 2)) continue;
    const end = name.indexOf(0);
    out.push({
      file: new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)),
      offset: dv.getUint32(36, true),
      retprobe: pt === 2,
    });
  }
  return out;
}

/**
 * The real object (default: the embedded one) with only the programs `names` loaded, nothing attached: for
 * code that attaches them itself, or runs them (BPF_PROG_TEST_RUN).
 */
export function loadPrograms(names: readonly string[], bytes: Uint8Array = embeddedObject()): BpfObject {
  requireRoot("loading BPF programs");
  const obj = BpfObject.openMem(bytes);
  try {
    for (const p of obj.programs()) p.autoload = names.includes(p.name);
    obj.setRingSize("events", 1 << 20);
    obj.setGlobals({ self_tgid: Deno.pid, use_ringbuf: true });
    obj.load();
  } catch (e) {
    obj.close();
    throw e;
  }
  return obj;
}

/** A process (a `sleep`) that maps a shared library through LD_PRELOAD, as a server maps its libraries. */
export interface LibraryUser extends AsyncDisposable {
  pid: number;
  kill(): Promise<void>;
}

export async function libraryUser(path: string): Promise<LibraryUser> {
  const child = new Deno.Command("sleep", {
    args: ["60"],
    env: { LD_PRELOAD: path },
    stdout: "null",
    stderr: "null",
  }).spawn();
  // Mapped once the dynamic loader is done: wait for the library to show in its maps.
  for (let i = 0; i < 200; i++) {
    try {
      if (Deno.readTextFileSync(`/proc/${child.pid}/maps`).includes(path)) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 10));
  }
  let done = false;
  const kill = async () => {
    if (done) return;
    done = true;
    child.kill("SIGKILL");
    await child.status;
  };
  return { pid: child.pid, kill, [Symbol.asyncDispose]: kill };
}
