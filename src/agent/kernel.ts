/**
 * The agent's kernel side: attach plan → final load (with fallback for the optional program sets) → the
 * probes that follow the servers' files (HTTPS, Apache's libapr) → TC per interface → ring or perf reader.
 * Also what the agent's timers ask of it: the servers' processes into the BPF maps, the probes and
 * interfaces kept current, the kernel's drop counters read. close() detaches everything and drains the ring.
 */
import type { Config } from "../config/config.ts";
import { log } from "../log.ts";
import { embeddedObject } from "../bpf/embedded.ts";
import { pageSize } from "../bpf/ffi.ts";
import {
  type AttachPlan,
  openPlanned,
  planFromConfig,
  type PlannedObject,
  readPrograms,
} from "../bpf/plan.ts";
import { loadWithFallback } from "../bpf/load.ts";
import { CpuCounters, ListenPorts, TracedPids } from "../bpf/maps.ts";
import { ensureTracefs } from "../bpf/tracefs.ts";
import { type AttachHandle, type BpfMap, possibleCpus } from "../bpf/object.ts";
import {
  type EventReader,
  PerfReader,
  type ReaderOptions,
  type ReaderStats,
  RingReader,
} from "../bpf/ringbuf.ts";
import { DropReason, ServerKind, Stat } from "../bpf/layout.gen.ts";
import { APR_PROGRAMS, AprProbes, programsOf } from "../capture/apr_probes.ts";
import type { ServerFollower } from "../capture/follow.ts";
import type { ServerKind as Server } from "../capture/procfs.ts";
import { TcCapture } from "../capture/tc_capture.ts";
import { TlsProbes } from "../capture/tls_probes.ts";
import { installedServerFiles, NGX_SSL_RECV, TLS_PROGRAMS } from "../capture/tls_sites.ts";

/** Probe programs that know their call's fd themselves (nginx's connection): no read() needed to learn it. */
const FD_FROM_PROBE = new Set(NGX_SSL_RECV.slice(1));
const MOD_SSL = /(^|\/)mod_ssl\.so$/;
/** The HTTPS and libapr probes look for replaced library files this often when the servers did not change. */
export const LIB_RESCAN_MS = 5_000;

const DROP_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(DropReason).map(([k, v]) => [v, k.toLowerCase()]),
);

/** Online CPUs (/sys/devices/system/cpu/online, e.g. "0-3,6"); the runtime's count if that cannot be read. */
export function onlineCpus(list?: string): number {
  try {
    list ??= Deno.readTextFileSync("/sys/devices/system/cpu/online");
  } catch {
    return navigator.hardwareConcurrency || 1;
  }
  let n = 0;
  for (const part of list.trim().split(",")) {
    const [a, b] = part.split("-").map(Number);
    if (Number.isInteger(a)) n += Number.isInteger(b) ? b - a + 1 : 1;
  }
  return n > 0 ? n : navigator.hardwareConcurrency || 1;
}

/**
 * capture.ring_size_mb, or for 0 (auto) 4 MiB per online CPU, a power of two between 8 and 64 MiB. The ring must
 * hold what the servers send while the reader is off CPU (it runs below them: CPUWeight), and they send in
 * proportion to the CPUs they run on. Measured on 2 vCPUs at full load: at most 0.4 MiB unread, 1.7 MiB with
 * the agent at nice 19 (ja4ebpf_ring_backlog_max_bytes), so 8 MiB there keeps more than 4× that.
 */
export function ringSizeMb(configured: number, cpus = onlineCpus()): number {
  if (configured > 0) return configured;
  const want = Math.min(64, Math.max(8, 4 * cpus));
  return 2 ** Math.ceil(Math.log2(want));
}

/** capture.ring_size_mb spread over the CPUs' perf rings: a power of two of pages per CPU (≥ 8). */
export function perfPagesPerCpu(ringMb: number, cpus = possibleCpus(), page = pageSize()): number {
  const want = Math.max(8, Math.floor((ringMb * 1024 * 1024) / (cpus * page)));
  return 2 ** Math.floor(Math.log2(want));
}

export interface KernelCaptureOptions {
  cfg: Config;
  /** The web servers' processes and ports: what the probes follow and the BPF maps filter on. */
  follow: ServerFollower;
  /** Aborted by the agent's stop(): attach() throws its reason at its next step, nothing more is attached. */
  signal: AbortSignal;
}

export class KernelCapture {
  /** The attach plan (set by attach()): the method per hook, the channel, the context. */
  plan!: AttachPlan;
  /** Our tc filters, per capture interface (src/capture/tc_capture.ts). */
  readonly tc: TcCapture;
  private planned?: PlannedObject;
  private reader?: EventReader;
  private extraLinks: AttachHandle[] = [];
  /** The read() programs are this object's to attach (not Apache's read hook, not raw_tp's), and whether they are. */
  private ownReads = false;
  /** When the probes last looked at the servers' files (refresh). */
  private libScanMs = -Infinity;
  private readsAttached = false;
  /** The HTTPS probes on the servers' files (or libssl) (set when the SSL programs are loaded). */
  private tls?: TlsProbes;
  /** Apache's apr_socket_recv uprobes, when their programs are loaded (chosen by the plan, or for a retry). */
  private apr?: AprProbes;
  /** The kernel's drop counters as last read, by reason. */
  private readonly kernelDrops = new Map<string, bigint>();
  private closing?: Promise<void>;
  private readonly cfg: Config;
  private readonly follow: ServerFollower;
  private readonly signal: AbortSignal;
  /** The ring's size in MiB (capture.ring_size_mb, or sized by the online CPUs): read once, used by the load,
   * the perf fallback and the ready line alike. */
  private readonly ringMb: number;

  constructor(opts: KernelCaptureOptions) {
    this.cfg = opts.cfg;
    this.ringMb = ringSizeMb(opts.cfg.capture.ring_size_mb);
    this.follow = opts.follow;
    this.signal = opts.signal;
    const { tc_handle, interfaces } = opts.cfg.capture;
    this.tc = new TcCapture({ handle: tc_handle, interfaces, signal: opts.signal });
  }

  /** Throws once the agent stops: start-up checks after every await, before attaching anything more. */
  private checkStopped(): void {
    this.signal.throwIfAborted();
  }

  /**
   * Plans, loads and attaches every hook, follows the servers' processes into the maps and probes their
   * files. The reader is started apart (startReader), once the agent is ready for records.
   */
  async attach(): Promise<void> {
    const cfg = this.cfg;
    // Tracepoints attach by name through tracefs, which a host as it boots may not have mounted yet.
    const tracefs = ensureTracefs();
    if (tracefs.mounted) log.info("tracefs mounted", { path: tracefs.path ?? "" });
    else if (!tracefs.path) log.warn("tracefs unavailable: no tracepoints", { error: tracefs.error ?? "" });

    const servers = cfg.uprobes.servers as Server[];
    const bytes = embeddedObject();
    // The same function --validate reports from: methods, channel, libapr and interfaces follow from cfg.
    this.plan = await planFromConfig(bytes, cfg);
    this.checkStopped();
    for (const h of this.plan.hooks) {
      const refused = h.attempts.filter((a) => !a.ok).map((a) => `${a.method}: ${a.error ?? a.stage}`);
      if (h.method) {
        log.info("hook attached", { hook: h.hook, method: h.method, refused: refused.join("; ") });
      } else log.warn("hook unavailable", { hook: h.hook, reason: h.reason ?? refused.join("; ") });
    }
    if (!this.plan.hooks.some((h) => (h.hook === "nginx" || h.hook === "apache") && h.method)) {
      throw new Error("no capture method works for nginx or apache on this kernel (see ja4ebpf --validate)");
    }
    const apacheHook = this.plan.hooks.find((h) => h.hook === "apache");
    const apacheReads = apacheHook?.method === "read_tracepoint";
    // HTTPS: SSL_read uprobes give the plaintext; nginx's read() of the socket teaches them the fd and
    // carries the raw ClientHello. Loaded with the rest, attached once a server maps libssl.
    // Where nginx runs on raw_tp (no syscall tracepoints), the raw_tp programs take read() too.
    const rawTpReads = this.plan.hooks.find((h) => h.hook === "nginx")?.method === "raw_tp";
    const ownReads = !apacheReads && !rawTpReads;
    const tlsProgs = [...TLS_PROGRAMS, ...(ownReads ? readPrograms() : [])];
    // Apache uprobes the plan did not choose (libapr missing at start) may be attached by the retry.
    const aprProgs = cfg.uprobes.enabled && servers.includes("apache") && apacheHook?.method !== "uprobe"
      ? programsOf(APR_PROGRAMS)
      : [];
    const open = (loadOnly: string[]) =>
      // TC filters are attached per interface below, so a vanishing interface costs only itself.
      openPlanned(bytes, this.plan, { tcInterfaces: [] }, {
        ringBytes: this.ringMb * 1024 * 1024,
        globals: {
          max_capture: Math.min(cfg.capture.max_head_bytes, 16384),
          raw_tp_reads: rawTpReads && cfg.uprobes.enabled,
          // Fixed capture.ports: tc watches those alone, whatever the servers listen on.
          follow_listen: cfg.capture.ports.length === 0,
          // The exec follower adds only the configured servers (bit 1 << ServerKind).
          follow_servers: (servers.includes("nginx") ? 1 << ServerKind.NGINX : 0) |
            (servers.includes("apache") ? 1 << ServerKind.APACHE : 0),
        },
        loadOnly,
      });
    // Optional programs the kernel refuses cost that feature only (uprobes.enabled covers the TLS libraries).
    const loaded = loadWithFallback(open, { tls: cfg.uprobes.enabled ? tlsProgs : [], apr: aprProgs });
    this.planned = loaded.planned;
    if (loaded.apr || apacheHook?.method === "uprobe") this.apr = this.aprProbes();
    const errs = loaded.errors;
    if (!loaded.tls && cfg.uprobes.enabled) {
      log.warn("HTTPS plaintext capture unavailable", { error: errs.tls ?? "" });
    }
    if (aprProgs.length && !this.apr) {
      log.warn("apache uprobe programs cannot be loaded: no later attach", { error: errs.apr ?? "" });
    }
    if (apacheHook?.method === "uprobe" && this.plan.context.libapr?.path) {
      // The plan attached them: track them per file so a replaced libapr is probed again.
      const links = programsOf(APR_PROGRAMS).flatMap((p) => this.planned!.programLinks.get(p) ?? []);
      this.apr?.adopt(this.plan.context.libapr.path, links);
    }
    const packets = !!this.plan.hooks.find((h) => h.hook === "packets")?.method;
    this.ownReads = !!loaded.tls && ownReads;
    if (loaded.tls) this.tls = this.tlsProbes();
    // Without tc, nginx's raw read stream is where its ClientHellos come from: the reads go on at once. With tc,
    // only when an SSL_* probe goes on (below): every read() on the host passes the tracepoint.
    if (packets) this.tc.enable(this.planned.obj.program("tc_ingress"));
    else this.attachReads("no packet capture: the ClientHello from nginx's read()");
    this.follow.followActive = !!this.plan.hooks.find((h) => h.hook === "follow")?.method;
    this.checkStopped();
    await this.tc.refresh();
    this.checkStopped();
    this.refreshProcesses();
    await this.refreshTls();
    this.checkStopped();
    await this.refreshApr();
    this.checkStopped();
    // Apache (or its libapr) not there yet: the retry attaches the uprobes when it shows up.
    if (apacheHook && !apacheHook.method && cfg.uprobes.enabled) this.apr?.scheduleRetry();
  }

  /**
   * Starts reading the ring (or perf) buffer: every record goes to the agent synchronously (in place in the
   * mapped ring where the reader can, else as a view), and onBatch runs after each batch that consumed records.
   */
  startReader(to: Pick<ReaderOptions, "onRecord" | "onRecordAt" | "onBatch">): void {
    const { onRecord, onRecordAt, onBatch } = to;
    const ringbuf = this.plan.ringbuf;
    const events = this.planned!.obj.map(ringbuf ? "events" : "events_perf");
    this.reader = ringbuf
      // Views, not copies: the trackers copy the few bytes they keep (a split head, a TLS record in pieces).
      ? new RingReader(events, { onRecord, onRecordAt, onBatch, views: true })
      : new PerfReader(
        events,
        { onRecord, onBatch },
        perfPagesPerCpu(this.ringMb),
      );
    this.reader.start();
  }

  /** Times the BPF side woke the ring's reader (a record crossed a sixteenth of the ring), since load. */
  ringWakeups(): number {
    return Number(CpuCounters.of(this.map("stats"))?.total(Stat.RING_WAKEUP) ?? 0n);
  }

  /** The reader's counters and the ring's size in bytes (undefined before startReader, 0 for perf buffers). */
  readerStats(): { stats: ReaderStats; ringBytes: number } | undefined {
    const r = this.reader;
    if (r === undefined) return undefined;
    return { stats: r.stats, ringBytes: r instanceof RingReader ? r.size : 0 };
  }

  /** The `ready` line's fields: methods per hook, channel, HTTPS probe sites, interfaces. */
  describe(): Record<string, string> {
    return {
      capture: this.plan.hooks.filter((h) => h.method).map((h) => `${h.hook}=${h.method}`).join(" "),
      buffer: this.plan.ringbuf ? "ringbuf" : "perfbuf",
      buffer_mb: String(this.ringMb),
      https: this.tls ? this.tls.describe().join(",") || "waiting for a TLS server" : "off",
      interfaces: this.tc.interfaces.join(","),
    };
  }

  private map(name: string): BpfMap | undefined {
    const o = this.planned?.obj;
    return o && o.hasMap(name) ? o.map(name) : undefined;
  }

  /** Follows server processes (new workers after reloads and restarts) into the BPF filter and ports. */
  refreshProcesses(): boolean {
    return this.follow.refresh(
      TracedPids.of(this.map("traced_pids")),
      ListenPorts.of(this.map("listen_ports")),
    );
  }

  /** New workers of the traced servers, between two full scans (see ServerFollower). */
  followChildren(): void {
    this.follow.followChildren(TracedPids.of(this.map("traced_pids")));
  }

  /**
   * The slow timer's share: the full process scan (throws on failure), the HTTPS and libapr probes, and
   * with `interfaces` the TC interfaces.
   */
  refresh(interfaces: boolean): void {
    const changed = this.refreshProcesses();
    const nowMs = Date.now();
    // The probes follow the files the servers map (one /proc/PID/maps read and parse per server process):
    // at once when the servers changed, else every LIB_RESCAN_MS for a library replaced under them.
    if (changed || nowMs - this.libScanMs >= LIB_RESCAN_MS) {
      this.libScanMs = nowMs;
      this.refreshTls().catch((e) => log.warn("TLS refresh failed", { error: String(e) }));
      this.refreshApr().catch((e) => log.warn("libapr refresh failed", { error: String(e) }));
    }
    if (interfaces) {
      this.tc.refresh().catch((e) => log.warn("interface refresh failed", { error: String(e) }));
    }
  }

  /** Keeps the HTTPS probes on the servers' files, or libssl as the fallback (see TlsProbes). */
  private refreshTls(): Promise<void> {
    return this.signal.aborted || !this.tls ? Promise.resolve() : this.tls.refresh();
  }

  /** Keeps the apr_socket_recv uprobes on every libapr file in use (see AprProbes). */
  private refreshApr(): Promise<void> {
    return this.signal.aborted || !this.apr ? Promise.resolve() : this.apr.refresh();
  }

  /**
   * Attaches the read() programs (once) that teach SSL_* probes their fd (the read inside the call) and carry
   * nginx's raw TLS stream. They run on every read() of every process on the host, so they go on only when
   * something needs them: an SSL_* probe (ngx_ssl_recv's probe reads the fd from the connection itself, and
   * tc gives the ClientHello), or no tc.
   */
  private attachReads(why: string): void {
    if (!this.ownReads || this.readsAttached) return;
    this.readsAttached = true;
    try {
      for (const p of readPrograms()) this.extraLinks.push(this.planned!.obj.program(p).attach());
      log.info("read tracepoints attached", { why });
    } catch (e) {
      log.warn("read tracepoints unavailable: HTTPS fd learning limited", { error: String(e) });
    }
  }

  private tlsProbes(): TlsProbes {
    const obj = this.planned!.obj;
    return new TlsProbes({
      mode: this.cfg.uprobes.tls_probes,
      attach: (prog, path, offset, retprobe) => {
        // Before the probe: its first call's read() must already teach it the fd. Not needed where the fd
        // comes from elsewhere: nginx's connection (ngx_ssl_recv), or Apache's apr_socket_recv probe, which
        // mod_ssl's reads pass through (it learns the SSL *'s fd, bpf/hooks/apache_apr.bpf.h).
        const fdKnown = FD_FROM_PROBE.has(prog) || (this.apr !== undefined && MOD_SSL.test(path));
        if (!fdKnown) this.attachReads(`${prog} on ${path}`);
        return obj.program(prog).attachUprobe({ path, offset, retprobe });
      },
      pids: () => this.follow.traced.keys(),
      preload: installedServerFiles(this.cfg.uprobes.servers),
    });
  }

  private aprProbes(): AprProbes {
    const obj = this.planned!.obj;
    const { max_retries, retry_interval_sec } = this.cfg.uprobes;
    return new AprProbes({
      attach: (prog, path, offset, retprobe) => obj.program(prog).attachUprobe({ path, offset, retprobe }),
      pids: () => [...this.follow.traced].filter(([, s]) => s === "apache").map(([pid]) => pid),
      maxRetries: max_retries,
      retryIntervalSec: retry_interval_sec,
      onRetryAttached: () => {
        const hook = this.plan.hooks.find((h) => h.hook === "apache");
        if (hook) hook.method = "uprobe";
      },
    });
  }

  /**
   * Reads the per-CPU drop counters of the BPF side (and the kretprobe's missed returns): what grew since
   * the last read goes to `drop(reason, n)`.
   */
  readDrops(drop: (reason: string, n: number) => void): void {
    const drops = CpuCounters.of(this.map("drops"));
    if (!drops) return;
    for (const [code, name] of Object.entries(DROP_NAMES)) {
      const v = drops.total(Number(code));
      const prev = this.kernelDrops.get(name) ?? 0n;
      if (v > prev) drop(name, Number(v - prev));
      this.kernelDrops.set(name, v);
    }
    for (const l of this.planned?.links ?? []) {
      const missed = (l as { nmissed?: () => number | undefined }).nmissed?.();
      if (missed) {
        const prev = this.kernelDrops.get("kretprobe_missed") ?? 0n;
        if (BigInt(missed) > prev) {
          drop("kretprobe_missed", missed - Number(prev));
          this.kernelDrops.set("kretprobe_missed", BigInt(missed));
        }
      }
    }
  }

  /**
   * Detaches every hook and probe, then drains what the ring still holds (to the reader's onRecord) and
   * frees the object. The tc claim is kept until release().
   */
  close(): Promise<void> {
    return this.closing ??= this.closeOnce();
  }

  private async closeOnce(): Promise<void> {
    // Detach before draining: with the hooks still attached, a busy host (every server on it is traced)
    // refills the ring as fast as it drains and the exit took > 15 s.
    for (const l of this.planned?.links ?? []) {
      try {
        l.close();
      } catch { /* closed with the object below */ }
    }
    for (const l of this.extraLinks) l.close();
    this.tls?.close();
    this.apr?.close();
    this.tc.close();
    try {
      this.reader?.drain();
    } catch { /* closing anyway */ }
    await this.reader?.close();
    this.planned?.close();
  }

  /** Our filters are detached: another agent may take the handle now. */
  release(): void {
    this.tc.release();
  }
}
