/**
 * Who owns the agent's tc filters, and sweeping the ones nobody owns. A classic tc filter outlives the
 * process that attached it (SIGKILL, OOM kill, crash): its program keeps running on every packet until
 * someone removes it. Our filters are identified by their handle/priority pair (`capture.tc_handle`) and
 * their program's name; an agent claims its pair for its lifetime with an abstract unix socket
 * `@ja4ebpf/tc/<handle>/<priority>`: the kernel releases it when the process dies however it dies, and it
 * is scoped to the network namespace, exactly like tc filters. Whoever holds the claim may remove filters
 * with that pair on every interface; a second agent asking for the same pair is refused.
 */
import { BpfError, libbpf, libc, quietLibbpf } from "./ffi.ts";
import { DEFAULT_TC_HANDLE, ifindex, tcHook, tcOpts } from "./object.ts";
import { PROBE_TC_HANDLE, PROBE_TC_PRIORITY } from "./plan.ts";

/** The program every tc filter of ours runs (the plan's probe attaches the same one). */
export const TC_PROGRAM = "tc_ingress";

export interface TcIdentity {
  handle: number;
  priority: number;
}

export const DEFAULT_TC: TcIdentity = { handle: DEFAULT_TC_HANDLE, priority: DEFAULT_TC_HANDLE };
export const PROBE_TC: TcIdentity = { handle: PROBE_TC_HANDLE, priority: PROBE_TC_PRIORITY };

const hex = (n: number) => "0x" + n.toString(16);

/** The abstract socket name of a claim (shown by `ss -xl` as `@ja4ebpf/tc/0x4a34/0x4a34`). */
export function claimName(id: TcIdentity): string {
  return `\0ja4ebpf/tc/${hex(id.handle)}/${hex(id.priority)}`;
}

/** Another live agent owns this handle/priority in this network namespace. */
export class TcHandleBusyError extends Error {
  constructor(readonly id: TcIdentity, readonly holder: number | undefined) {
    super(
      `another ja4ebpf agent${holder ? ` (pid ${holder})` : ""} owns tc filter handle ${hex(id.handle)} ` +
        `priority ${hex(id.priority)} in this network namespace: stop it, or give this one its own ` +
        `capture.tc_handle`,
    );
    this.name = "TcHandleBusyError";
  }
}

/** A held claim; release() (or process death) gives it up. */
export class TcClaim implements Disposable {
  #listener: Deno.Listener | null;
  constructor(readonly id: TcIdentity, listener: Deno.Listener) {
    this.#listener = listener;
  }
  get held(): boolean {
    return this.#listener !== null;
  }
  release(): void {
    const l = this.#listener;
    this.#listener = null;
    try {
      l?.close();
    } catch { /* closed already */ }
  }
  [Symbol.dispose](): void {
    this.release();
  }
}

/** Claims id for this process, or throws TcHandleBusyError naming the live holder. */
export function claimTc(id: TcIdentity): TcClaim {
  const path = claimName(id);
  try {
    return new TcClaim(id, Deno.listen({ transport: "unix", path }));
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) throw new TcHandleBusyError(id, claimHolder(id));
    throw e;
  }
}

/** Pid of the process holding a claim (its socket inode among the fds in /proc), if it can be seen. */
export function claimHolder(id: TcIdentity): number | undefined {
  const name = "@" + claimName(id).slice(1);
  let inode = "";
  try {
    for (const line of Deno.readTextFileSync("/proc/net/unix").split("\n")) {
      const f = line.trim().split(/\s+/);
      if (f[7] === name) inode = f[6];
    }
  } catch {
    return undefined;
  }
  if (!inode) return undefined;
  const link = `socket:[${inode}]`;
  for (const p of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(p.name)) continue;
    try {
      for (const fd of Deno.readDirSync(`/proc/${p.name}/fd`)) {
        try {
          if (Deno.readLinkSync(`/proc/${p.name}/fd/${fd.name}`) === link) return Number(p.name);
        } catch { /* closed meanwhile */ }
      }
    } catch { /* gone, or not ours to read */ }
  }
  return undefined;
}

/** The filter with this handle/priority on an interface's clsact hook: its program id, or undefined. */
export function tcQuery(
  iface: string | number,
  id: TcIdentity,
  direction: "ingress" | "egress" = "ingress",
): number | undefined {
  const opts = tcOpts(0, id.handle, id.priority, 0);
  // Most interfaces have no clsact qdisc or no such filter: the kernel's "not found" is the answer here.
  const hook = tcHook(ifindex(iface), direction);
  const rc = quietLibbpf(() => libbpf().bpf_tc_query(hook, opts));
  // ENOENT: no such filter; EINVAL: no clsact qdisc on the interface.
  if (rc === -2 || rc === -22) return undefined;
  if (rc < 0) throw new BpfError("bpf_tc_query", -rc, `${iface} ${direction} handle ${hex(id.handle)}`);
  return new DataView(opts.buffer).getUint32(16, true);
}

/** A program's name (BPF_OBJ_NAME_LEN: at most 15 characters) by id, or undefined when it cannot be read. */
export function progName(id: number): string | undefined {
  const fd = libbpf().bpf_prog_get_fd_by_id(id);
  if (fd < 0) return undefined;
  try {
    // struct bpf_prog_info: name[16] at offset 64.
    const info = new Uint8Array(80);
    const len = new Uint32Array([info.length]);
    if (libbpf().bpf_obj_get_info_by_fd(fd, info, new Uint8Array(len.buffer)) < 0) return undefined;
    const name = info.subarray(64, 80);
    const end = name.indexOf(0);
    return new TextDecoder().decode(name.subarray(0, end < 0 ? 16 : end));
  } finally {
    libc().close(fd);
  }
}

export interface SweptFilter {
  iface: string;
  handle: number;
  priority: number;
  progId: number;
}

/** Interfaces of this network namespace. */
export function allInterfaces(): string[] {
  try {
    return [...Deno.readDirSync("/sys/class/net")].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

/**
 * Removes the ingress filters with these handle/priority pairs on every interface (or those given) whose
 * program is ours (by name; a filter whose program cannot be read is taken as ours: the pair is our
 * identity). A foreign filter at another priority, and the clsact qdisc, are never touched. Call it only
 * while holding the claims of those pairs (or knowing no agent of ours runs). Returns what it removed;
 * an interface that vanished or refused is skipped and reported in `errors`.
 */
export function sweepTc(
  ids: TcIdentity[],
  ifaces = allInterfaces(),
): { removed: SweptFilter[]; errors: string[] } {
  const removed: SweptFilter[] = [];
  const errors: string[] = [];
  for (const iface of ifaces) {
    for (const id of ids) {
      try {
        const progId = tcQuery(iface, id);
        if (progId === undefined) continue;
        const name = progName(progId);
        if (name !== undefined && name !== TC_PROGRAM) continue;
        const rc = libbpf().bpf_tc_detach(
          tcHook(ifindex(iface), "ingress"),
          tcOpts(0, id.handle, id.priority, 0),
        );
        if (rc < 0 && rc !== -2) throw new BpfError("bpf_tc_detach", -rc, iface);
        if (rc === 0) removed.push({ iface, handle: id.handle, priority: id.priority, progId });
      } catch (e) {
        // An interface that went away between the listing and the query is not an error.
        if (e instanceof BpfError && e.errno === 19) continue;
        errors.push(`${iface}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
  return { removed, errors };
}
