/**
 * Typed access to the maps user space writes or reads (bpf/common.bpf.h): keys and values encoded here
 * (host byte order: little-endian on x86-64 and arm64) instead of by hand at each call. Each checks the map's key/value sizes when
 * wrapped, so a change of the C declaration fails loudly instead of writing wrong bytes.
 */
import { type BpfMap, u32Key } from "./object.ts";
import { PortState, type ServerKind, TracedBits } from "./layout.gen.ts";

/** The map's key and value sizes, or a clear error naming the drift. */
function checkSizes(map: BpfMap, key: number, value: number): BpfMap {
  if (map.keySize !== key || map.valueSize !== value) {
    throw new Error(
      `map ${map.name}: key/value ${map.keySize}/${map.valueSize} bytes, expected ${key}/${value}`,
    );
  }
  return map;
}

const readU32 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);

/** The kind in a traced_pids value (the bits above it are the kernel's probe counters, enum ja4_traced_bits). */
export const tracedKind = (value: number): number => value & ((1 << TracedBits.KIND_BITS) - 1);

/**
 * traced_pids: tgid (u32) → ServerKind (u32, low byte; the probes count in the bits above, which entries()
 * leaves out); the follow programs update it in the kernel too.
 */
export class TracedPids {
  readonly map: BpfMap;
  constructor(map: BpfMap) {
    this.map = checkSizes(map, 4, 4);
  }
  static of(map: BpfMap | undefined): TracedPids | undefined {
    return map && new TracedPids(map);
  }
  set(pid: number, kind: ServerKind): void {
    this.map.update(u32Key(pid), u32Key(kind));
  }
  delete(pid: number): boolean {
    return this.map.delete(u32Key(pid));
  }
  /** Every entry: keys first, then values (deleting while walking restarts the walk). */
  entries(): Map<number, number> {
    const out = new Map<number, number>();
    for (const k of [...this.map.keys()]) {
      const v = this.map.lookup(k);
      if (v) out.set(readU32(k), tracedKind(readU32(v)));
    }
    return out;
  }
}

/**
 * listen_ports: an array indexed by server TCP port (host order), a PortState: WATCHED = tc keeps its SYNs
 * and reports first bytes, PLAIN = the same but its connections began in plain text so far (tc sets it, and
 * takes it back when a TLS stream shows up there), OFF = not watched (array elements cannot be deleted, only
 * cleared). `add` makes a port WATCHED.
 */
export class ListenPorts {
  readonly map: BpfMap;
  constructor(map: BpfMap) {
    this.map = checkSizes(map, 4, 1);
  }
  static of(map: BpfMap | undefined): ListenPorts | undefined {
    return map && new ListenPorts(map);
  }
  add(port: number): void {
    this.map.update(u32Key(port), ON);
  }
  /** true when the port was watched. */
  delete(port: number): boolean {
    const was = this.has(port);
    if (was) this.map.update(u32Key(port), OFF);
    return was;
  }
  /** Watched (PortState.WATCHED, or PLAIN: the BPF side saw its connections begin in plain text). */
  has(port: number): boolean {
    return (this.map.lookup(u32Key(port))?.[0] ?? 0) !== 0;
  }
}

const ON = new Uint8Array([PortState.WATCHED]), OFF = new Uint8Array([PortState.OFF]);

/**
 * drops (indexed by DropReason) and stats (by Stat): per-CPU u64 counters with a u32 index; user space sums
 * the CPUs.
 */
export class CpuCounters {
  readonly map: BpfMap;
  constructor(map: BpfMap) {
    this.map = checkSizes(map, 4, 8);
  }
  static of(map: BpfMap | undefined): CpuCounters | undefined {
    return map && new CpuCounters(map);
  }
  total(index: number): bigint {
    return this.map.sumU64(u32Key(index));
  }
}
