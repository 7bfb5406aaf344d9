/**
 * The running agent: attach plan → BPF object → ring-buffer reader → request/packet trackers →
 * correlator → sinks, plus the timers that follow server processes, read kernel drop counters and flush.
 *
 * Everything that can fail at start-up fails before the `ready` log line; everything after it is counted.
 */
import { changedKeys, type Config, loadConfig } from "../config/config.ts";
import { configureLog, log } from "../log.ts";
import { embeddedObject } from "../bpf/embedded.ts";
import { pageSize } from "../bpf/ffi.ts";
import {
  type AttachPlan,
  captureInterfaces,
  openPlanned,
  planFromConfig,
  type PlannedObject,
  readPrograms,
} from "../bpf/plan.ts";
import { loadWithFallback } from "../bpf/load.ts";
import { DropCounters, ListenPorts, TracedPids } from "../bpf/maps.ts";
import { probeLibapr } from "../bpf/probes.ts";
import { ensureTracefs } from "../bpf/tracefs.ts";
import { claimTc, PROBE_TC, sweepTc, type TcClaim, TcHandleBusyError, type TcIdentity } from "../bpf/tc.ts";
import { possibleCpus } from "../bpf/object.ts";
import type { AttachHandle, BpfMap } from "../bpf/object.ts";
import { EventView, HOOK_METHODS } from "../bpf/events.ts";
import { LibraryProbes, type UprobePair } from "./lib_probes.ts";
import { TlsProbes } from "../capture/tls_probes.ts";
import { installedServerFiles, TLS_PROGRAMS } from "../capture/tls_sites.ts";
import { type EventReader, PerfReader, RingReader } from "../bpf/ringbuf.ts";
import { DropReason, EventKind, ServerKind } from "../bpf/layout.gen.ts";
import { type CapturedHello, RequestTracker } from "../capture/requests.ts";
import { type HelloOut, PacketTracker } from "../capture/packets.ts";
import { processSockets, type ServerKind as Server } from "../capture/procfs.ts";
import { ServerFollower } from "../capture/follow.ts";
import { Correlator } from "../correlate/correlator.ts";
import { makeRedactor, openOutputs, type OutputSink } from "../sink/mod.ts";
import type { SyncWriter } from "../sink/stdout.ts";
import type { Row } from "../sink/row.ts";
import { AgentMetrics } from "../metrics/agent.ts";
import { type MetricsServer, startMetricsServer } from "../metrics/server.ts";

export interface AgentOptions {
  stdout?: SyncWriter;
  /** Where rows go instead of the configured sinks (tests). */
  rowHook?: (rows: Row[]) => void;
}

/** stop() was called while start() was still running: start() gave up, stop() removes what it attached. */
export class StartAbortedError extends Error {
  constructor() {
    super("stopped during start-up");
    this.name = "StartAbortedError";
  }
}

/** What reload() applies without a restart; any other changed key is reported as needing one. */
const APPLIED_ON_RELOAD = ["log.", "privacy."];

const DROP_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(DropReason).map(([k, v]) => [v, k.toLowerCase()]),
);

/** Apache's apr_socket_recv uprobes. */
const APR_PROGRAMS: readonly UprobePair[] = [
  ["apr_socket_recv", "uprobe_apr_socket_recv_entry", "uretprobe_apr_socket_recv"],
];
const programsOf = (pairs: readonly UprobePair[]) => pairs.flatMap(([, entry, ret]) => [entry, ret]);

/** capture.ring_size_mb spread over the CPUs' perf rings: a power of two of pages per CPU (≥ 8). */
export function perfPagesPerCpu(ringMb: number, cpus = possibleCpus(), page = pageSize()): number {
  const want = Math.max(8, Math.floor((ringMb * 1024 * 1024) / (cpus * page)));
  return 2 ** Math.floor(Math.log2(want));
}

/**
 * An exception nothing caught (an unhandled rejection, a throw in a timer) would end the process at once:
 * TC filters stay attached (they outlive the process), rows held in memory are lost uncounted. Instead: log
 * it, run `stop` (detach, flush into the spool), and exit 1 so systemd restarts the agent (Restart=on-failure)
 * and the spool is replayed. Returns the uninstaller.
 */
export function installFatalHandler(
  stop: () => Promise<void>,
  exit: (code: number) => void = (code) => Deno.exit(code),
  graceMs = 25_000,
): () => void {
  let fatal = false;
  const onFatal = (e: Event) => {
    e.preventDefault();
    const err = e instanceof PromiseRejectionEvent ? e.reason : (e as ErrorEvent).error;
    log.error("uncaught error: stopping", {
      error: err instanceof Error ? err.stack ?? err.message : String(err),
    });
    if (fatal) return;
    fatal = true;
    // Bounded: a stop that hangs must still end the process before systemd's TimeoutStopSec.
    const t = setTimeout(() => exit(1), graceMs);
    stop().catch((s) => log.error("stop failed", { error: String(s) })).finally(() => {
      clearTimeout(t);
      exit(1);
    });
  };
  globalThis.addEventListener("unhandledrejection", onFatal);
  globalThis.addEventListener("error", onFatal);
  return () => {
    globalThis.removeEventListener("unhandledrejection", onFatal);
    globalThis.removeEventListener("error", onFatal);
  };
}

export class Agent {
  readonly metrics: AgentMetrics;
  readonly requests: RequestTracker;
  readonly packets = new PacketTracker();
  /** The web servers' processes and listening ports (src/capture/follow.ts). */
  readonly follow: ServerFollower;
  readonly correlator: Correlator;
  plan!: AttachPlan;
  private planned?: PlannedObject;
  private reader?: EventReader;
  private outputs?: OutputSink;
  private metricsServer?: MetricsServer;
  /** The one reusable view every ring record is decoded into (nothing allocated per event). */
  private readonly view = new EventView();
  /** Events by hook id, published to ja4ebpf_events_total at scrape time (no label lookup per event). */
  private readonly eventCounts: number[] = [];
  /** Capture method per server, resolved from the plan once (not per event). */
  private methods = new Map<string, string>();
  private timers: ReturnType<typeof setInterval>[] = [];
  private extraLinks: AttachHandle[] = [];
  private tlsCapture = false;
  /** Interfaces with our TC filter; interfaces that come up later get one too (capture.interfaces: auto). */
  private tcIfaces = new Set<string>();
  private tcEnabled = false;
  private tcLinks = new Map<string, AttachHandle>();
  private ticks = 0;
  /** The HTTPS probes on the servers' files (or libssl) (set when the SSL programs are loaded). */
  private tls?: TlsProbes;
  /** Wall-clock ms minus monotonic ms, estimated from events (smallest difference seen). */
  private clockOffsetMs: number | undefined;
  private clockReads = 0;
  private aprRetries = 0;
  /** The apr_socket_recv programs are loaded (chosen by the plan, or loaded for a later attach). */
  private aprLoaded = false;
  /** The apr uprobes on every libapr file in use (the located one and those Apache maps), once in use. */
  private apr?: LibraryProbes;
  private stopped = false;
  private stopping?: Promise<void>;
  private removeFatalHandler?: () => void;
  /** The running start(), which stop() waits for before tearing down. */
  private starting?: Promise<void>;
  /** This agent's tc handle/priority, held for its lifetime (src/bpf/tc.ts). */
  private tcClaim?: TcClaim;
  readonly kernelDrops = new Map<string, bigint>();
  private hostname = Deno.hostname();

  constructor(readonly cfg: Config, private readonly opts: AgentOptions = {}) {
    this.follow = new ServerFollower(cfg.uprobes.servers as Server[], cfg.capture.ports);
    this.metrics = new AgentMetrics();
    this.requests = new RequestTracker({
      request: (row, fd, tsNs, tls) => {
        this.metrics.rows.capture(1);
        // A plaintext (SSL_read) request is TLS; HTTP parsed from the raw socket stream is a plain-HTTP
        // connection, so its row need not wait for a ClientHello that will never come.
        this.correlator.onRequest(row.src_port !== 0 ? row : null, row.pid, fd, row, this.wallMs(tsNs), tls);
      },
      hello: (h) => this.onHello(h),
    }, { maxStreams: cfg.capture.max_connections, maxHead: 64 * 1024 });
    this.correlator = new Correlator({
      host: this.hostname,
      holdMs: cfg.capture.hold_ms,
      maxConnections: cfg.capture.max_connections,
    });
    this.metrics.watchCorrelator(() => this.correlator.stats());
    // What the trackers' parsers rejected (HTTP/1, HTTP/2 + HPACK, TLS hellos) is counted there: mirror it.
    this.metrics.registry.onCollect(() => {
      const pe = this.metrics.parseErrors;
      pe.setTotal({ parser: "request_stream", kind: "invalid" }, this.requests.stats().parse_errors);
      pe.setTotal({ parser: "packet_hello", kind: "invalid" }, this.packets.stats().parse_errors);
      const m = this.view.malformed, events = this.metrics.events;
      pe.setTotal({ parser: "event", kind: "malformed" }, m.short + m.kind + m.length);
      this.eventCounts.forEach((n, id) => n && events.setTotal({ hook: HOOK_METHODS[id] ?? "unknown" }, n));
    });
  }

  /**
   * Plans, loads and attaches; resolves once every hook is attached ("ready"). A stop() meanwhile makes it
   * reject with StartAbortedError at its next step, and nothing is attached after that.
   */
  start(): Promise<void> {
    this.starting ??= this.startUp();
    return this.starting;
  }

  /** Throws once stop() was called: start-up checks after every await, before attaching anything more. */
  private checkStopped(): void {
    if (this.stopped) throw new StartAbortedError();
  }

  /**
   * Claims this agent's tc handle/priority for its lifetime (a second agent with the same one is refused)
   * and removes the filters with it left on any interface by an agent that died without detaching
   * (SIGKILL), also on interfaces this run will not attach to.
   */
  private async claimAndSweepTc(): Promise<void> {
    const h = this.cfg.capture.tc_handle;
    if (h === PROBE_TC.handle) {
      throw new Error(`capture.tc_handle ${h} (0x${h.toString(16)}) is reserved for the start-up probe`);
    }
    const ours: TcIdentity = { handle: h, priority: h };
    this.tcClaim = claimTc(ours);
    const ids = [ours];
    // The plan's probe filter: swept when no other agent is probing right now (it holds that claim briefly).
    let probe: TcClaim | undefined;
    for (let i = 0; i < 50 && !probe; i++) {
      try {
        probe = claimTc(PROBE_TC);
      } catch (e) {
        if (!(e instanceof TcHandleBusyError)) throw e;
        await new Promise((r) => setTimeout(r, 100));
        this.checkStopped();
      }
    }
    if (probe) ids.push(PROBE_TC);
    try {
      const { removed, errors } = sweepTc(ids);
      if (removed.length) {
        log.warn("removed tc filters left by an agent that did not stop", {
          filters: removed.map((f) => `${f.iface}:0x${f.handle.toString(16)}`).join(","),
        });
      }
      if (errors.length) log.warn("tc sweep incomplete", { errors: errors.join("; ") });
    } finally {
      probe?.release();
    }
  }

  private async startUp(): Promise<void> {
    const cfg = this.cfg;
    // Before anything else: a second agent owning our tc handle is refused without touching anything.
    await this.claimAndSweepTc();
    if (cfg.metrics.enabled) {
      this.metricsServer = startMetricsServer(this.metrics, cfg.metrics) ?? undefined;
      log.info("metrics listening", { listen: cfg.metrics.listen });
    }
    this.outputs = await openOutputs(cfg, { stdout: this.opts.stdout });
    // Insert latency, errors by class, last success and sink health come from the sinks' requests.
    const observer = this.metrics.sinkObserver();
    for (const s of this.outputs.sinks.sinks) s.observe?.(observer);
    this.removeFatalHandler = installFatalHandler(() => this.stop());
    this.checkStopped();

    // Tracepoints attach by name through tracefs, which a host as it boots may not have mounted yet.
    const tracefs = ensureTracefs();
    if (tracefs.mounted) log.info("tracefs mounted", { path: tracefs.path ?? "" });
    else if (!tracefs.path) log.warn("tracefs unavailable: no tracepoints", { error: tracefs.error ?? "" });

    const servers = cfg.uprobes.servers as Server[];
    const bytes = embeddedObject();
    // The same function --validate reports from: methods, channel, libapr and interfaces follow from cfg.
    this.plan = await planFromConfig(bytes, cfg);
    this.checkStopped();
    const ringbuf = this.plan.ringbuf;
    // One ring keeps each connection's events in order (per-CPU perf buffers do not): closed connections
    // need not linger for late events.
    this.correlator.opts.orderedEvents = ringbuf;
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
        ringBytes: cfg.capture.ring_size_mb * 1024 * 1024,
        globals: {
          max_capture: Math.min(cfg.capture.max_head_bytes, 16384),
          raw_tp_reads: rawTpReads && cfg.uprobes.enabled,
          // The exec follower adds only the configured servers (bit 1 << ServerKind).
          follow_servers: (servers.includes("nginx") ? 1 << ServerKind.NGINX : 0) |
            (servers.includes("apache") ? 1 << ServerKind.APACHE : 0),
        },
        loadOnly,
      });
    // Optional programs the kernel refuses cost that feature only (uprobes.enabled covers the TLS libraries).
    const loaded = loadWithFallback(open, { tls: cfg.uprobes.enabled ? tlsProgs : [], apr: aprProgs });
    this.planned = loaded.planned;
    this.tlsCapture = loaded.tls;
    this.aprLoaded = loaded.apr || apacheHook?.method === "uprobe";
    const errs = loaded.errors;
    if (!this.tlsCapture && cfg.uprobes.enabled) {
      log.warn("HTTPS plaintext capture unavailable", { error: errs.tls ?? "" });
    }
    if (aprProgs.length && !this.aprLoaded) {
      log.warn("apache uprobe programs cannot be loaded: no later attach", { error: errs.apr ?? "" });
    }
    if (apacheHook?.method === "uprobe" && this.plan.context.libapr?.path) {
      // The plan attached them: track them per file so a replaced libapr is probed again.
      const links = programsOf(APR_PROGRAMS).flatMap((p) => this.planned!.programLinks.get(p) ?? []);
      this.apr = this.aprProbes();
      this.apr.adopt(this.plan.context.libapr.path, links);
    }
    if (this.tlsCapture) this.tls = this.tlsProbes();
    if (this.tlsCapture && ownReads) {
      try {
        for (const p of readPrograms()) this.extraLinks.push(this.planned.obj.program(p).attach());
      } catch (e) {
        log.warn("read tracepoints unavailable: HTTPS fd learning limited", { error: String(e) });
      }
    }
    this.tcEnabled = !!this.plan.hooks.find((h) => h.hook === "packets")?.method;
    this.follow.followActive = !!this.plan.hooks.find((h) => h.hook === "follow")?.method;
    this.checkStopped();
    await this.refreshInterfaces();
    this.checkStopped();
    this.refreshProcesses();
    await this.refreshTls();
    this.checkStopped();
    await this.refreshApr();
    this.checkStopped();
    this.seedConnections();

    const events = this.planned.obj.map(ringbuf ? "events" : "events_perf");
    const onRecord = (rec: Uint8Array) => this.onRecord(rec);
    // Rows completed by a batch go out at its end, not at the next 100 ms tick (see ReaderOptions.onBatch).
    const onBatch = () => this.flushReady();
    this.reader = ringbuf
      // Views, not copies: the trackers copy the few bytes they keep (a split head, a TLS record in pieces).
      ? new RingReader(events, {
        onRecord,
        // Decoded in place in the mapped ring: no view or DataView allocated per record.
        onRecordAt: (area, dv, off, len) => this.onRecordAt(area, dv, off, len),
        onBatch,
        views: true,
      })
      : new PerfReader(events, { onRecord, onBatch }, perfPagesPerCpu(cfg.capture.ring_size_mb));
    this.reader.start();

    this.timers.push(setInterval(() => this.tick(), 100));
    this.timers.push(setInterval(() => this.slowTick(), 1000));
    const apache = this.plan.hooks.find((h) => h.hook === "apache");
    if (apache && !apache.method && cfg.uprobes.enabled) this.scheduleAprRetry();
    log.info("ready", {
      capture: this.plan.hooks.filter((h) => h.method).map((h) => `${h.hook}=${h.method}`).join(" "),
      buffer: ringbuf ? "ringbuf" : "perfbuf",
      https: this.tls ? this.tls.describe().join(",") || "waiting for a TLS server" : "off",
      interfaces: [...this.tcIfaces].join(","),
      ports: [...this.follow.ports].join(","),
    });
  }

  /** Method name put on rows: the hook's chosen method. */
  private methodOf(server: string): string {
    let m = this.methods.get(server);
    if (m === undefined) {
      m = this.plan.hooks.find((h) => h.hook === server)?.method ?? "";
      this.methods.set(server, m);
    }
    return m;
  }

  private interfaces(): Promise<string[]> {
    return captureInterfaces(this.cfg.capture.interfaces);
  }

  private map(name: string): BpfMap | undefined {
    const o = this.planned?.obj;
    return o && o.hasMap(name) ? o.map(name) : undefined;
  }

  /** Follows server processes (new workers after reloads and restarts) into the BPF filter and ports. */
  refreshProcesses(): void {
    this.follow.refresh(TracedPids.of(this.map("traced_pids")), ListenPorts.of(this.map("listen_ports")));
  }

  /**
   * Attaches the TC program to every capture interface; with capture.interfaces auto, also to interfaces
   * that come up later (and forgets those that went away). A failing interface is logged and skipped.
   */
  async refreshInterfaces(): Promise<void> {
    if (!this.planned || !this.tcEnabled) return;
    const want = this.cfg.capture.interfaces;
    const auto = want.length === 0 || want.includes("auto");
    if (!auto && this.tcIfaces.size) return;
    const now = new Set(await this.interfaces());
    if (this.stopped) return; // stop() ran meanwhile: attach nothing more
    const ctx = this.plan.context;
    for (const iface of now) {
      if (this.tcIfaces.has(iface)) continue;
      try {
        this.tcLinks.set(
          iface,
          this.planned.obj.program("tc_ingress").attachTc({
            iface,
            direction: "ingress",
            handle: ctx.tcHandle,
            priority: ctx.tcPriority,
          }),
        );
        this.tcIfaces.add(iface);
        log.info("packet capture attached", { interface: iface });
      } catch (e) {
        log.warn("tc attach failed", { interface: iface, error: e instanceof Error ? e.message : String(e) });
      }
    }
    for (const iface of [...this.tcIfaces]) {
      if (!auto || now.has(iface)) continue;
      try {
        this.tcLinks.get(iface)?.close();
      } catch { /* the interface and its filters are gone already */ }
      this.tcLinks.delete(iface);
      this.tcIfaces.delete(iface);
    }
  }

  /** Keeps the HTTPS probes on the servers' files, or libssl as the fallback (see TlsProbes). */
  refreshTls(): Promise<void> {
    return this.stopped || !this.tls ? Promise.resolve() : this.tls.refresh();
  }

  /** Keeps the apr_socket_recv uprobes on every libapr file in use (see LibraryProbes). */
  refreshApr(): Promise<void> {
    return this.stopped || !this.apr ? Promise.resolve() : this.apr.refresh();
  }

  private libraryProbes(
    library: RegExp,
    pairs: readonly UprobePair[],
    servers: Server[],
    messages: LibraryProbes["opts"]["messages"],
  ): LibraryProbes {
    const obj = this.planned!.obj;
    return new LibraryProbes({
      library,
      pairs,
      attach: (prog, path, offset, retprobe) => obj.program(prog).attachUprobe({ path, offset, retprobe }),
      pids: () => [...this.follow.traced].filter(([, s]) => servers.includes(s)).map(([pid]) => pid),
      messages,
    });
  }

  private tlsProbes(): TlsProbes {
    const obj = this.planned!.obj;
    return new TlsProbes({
      mode: this.cfg.uprobes.tls_probes,
      attach: (prog, path, offset, retprobe) => obj.program(prog).attachUprobe({ path, offset, retprobe }),
      pids: () => this.follow.traced.keys(),
      preload: installedServerFiles(this.cfg.uprobes.servers),
    });
  }

  private aprProbes(): LibraryProbes {
    return this.libraryProbes(/^libapr-1\.so/, APR_PROGRAMS, ["apache"], {
      attached: "apache uprobes attached",
      reattached: "apache uprobes re-attached: libapr was replaced",
      detached: "apache uprobes detached: no process maps this libapr any more",
      failed: "apache uprobe attach failed",
    });
  }

  /** Keep-alive connections accepted before the agent started: bind (pid, fd) to their 4-tuple. */
  private seedConnections(): void {
    const now = Date.now();
    let n = 0;
    for (const s of processSockets([...this.follow.traced.keys()])) {
      if (s.state !== 1) continue;
      this.correlator.bind(
        { src: s.remote, src_port: s.remotePort, dst: s.local, dst_port: s.localPort },
        s.pid,
        s.fd,
        now,
      );
      n++;
    }
    if (n) log.info("seeded existing connections", { connections: n });
  }

  /** Wall-clock ms of a monotonic ns time (the offset is the smallest difference seen, i.e. least delayed). */
  private wallMs(tsNs: number): number {
    const mono = tsNs / 1e6;
    // The offset only moves when the wall clock is stepped: one clock read per 64 events keeps it current
    // without a system call per event.
    if (this.clockOffsetMs === undefined || (++this.clockReads & 63) === 0) {
      const diff = Date.now() - mono;
      if (this.clockOffsetMs === undefined || diff < this.clockOffsetMs) this.clockOffsetMs = diff;
    }
    return mono + this.clockOffsetMs;
  }

  /**
   * One ring-buffer record, synchronously: decoded into the reusable view, then straight to the tracker that
   * owns its kind. Requests leave the request tracker as rows for the correlator (RequestSink), never through
   * here again.
   */
  onRecord(rec: Uint8Array): void {
    if (this.view.load(rec)) this.handle(); // else counted in view.malformed
  }

  /** One record at `off` of the mapped ring area (RingReader's onRecordAt). */
  onRecordAt(area: Uint8Array, dv: DataView, off: number, len: number): void {
    if (this.view.loadAt(area, dv, off, len)) this.handle();
  }

  private handle(): void {
    const ev = this.view;
    this.eventCounts[ev.hookId] = (this.eventCounts[ev.hookId] ?? 0) + 1;
    try {
      this.dispatch(ev);
    } catch (e) {
      // A bug in one event's handling must not stop the capture: count and log (rate-limited).
      this.metrics.parseErrors.inc({ parser: "agent", kind: "exception" });
      log.error("event handling failed", { error: e instanceof Error ? e.message : String(e) });
    }
  }

  private dispatch(ev: EventView): void {
    switch (ev.kind) {
      case EventKind.DATA: {
        if (ev.readFailed) return;
        const server = this.follow.traced.get(ev.pid) ?? (ev.comm === "nginx" ? "nginx" : "apache");
        ev.server = server;
        ev.capture = ev.plaintext ? "ssl_uprobe" : this.methodOf(server);
        this.requests.push(ev);
        return;
      }
      case EventKind.SYN: {
        const j = this.packets.syn(ev);
        this.correlator.onSyn(ev, j, this.wallMs(ev.tsNs));
        return;
      }
      case EventKind.PKT: {
        const h = this.packets.segment(ev);
        if (h) this.onHello(h);
        return;
      }
      case EventKind.CLOSE:
        this.requests.close(ev.pid, ev.fd);
        if (ev.src_port) this.packets.close(ev);
        this.correlator.onClose(ev.src_port ? ev : null, ev.pid, ev.fd, this.wallMs(ev.tsNs));
        return;
    }
  }

  private onHello(h: CapturedHello | HelloOut): void {
    this.correlator.onClientHello(
      h,
      { ja4: h.fp.ja4, ja4_r: h.fp.ja4_r, tls_server_name: h.hello.serverName ?? "" },
      this.wallMs(h.tsNs),
    );
  }

  /** New workers of the traced servers, between two full scans (see ServerFollower). */
  followChildren(): void {
    this.follow.followChildren(TracedPids.of(this.map("traced_pids")));
  }

  private tick(): void {
    try {
      this.followChildren();
    } catch (e) {
      log.warn("following server children failed", { error: e instanceof Error ? e.message : String(e) });
    }
    const rows = this.correlator.tick(Date.now());
    if (rows.length) this.emit(rows);
  }

  private flushReady(): void {
    const rows = this.correlator.takeReady();
    if (rows.length) this.emit(rows);
  }

  private emit(rows: Row[]): void {
    for (const r of rows) r.pid = r.pid || 0;
    if (this.opts.rowHook) this.opts.rowHook(rows);
    this.metrics.rows.move("correlate", "memory", rows.length);
    this.outputs?.write(rows);
    this.syncLedger();
  }

  /**
   * Moves rows through the ledger as the primary sink reports them sealed, delivered, quarantined or dropped,
   * so captured = shipped + spooled + quarantined + dropped holds at every scrape.
   */
  syncLedger(): void {
    this.metrics.syncSinks(this.outputs?.allStats() ?? []);
  }

  private slowTick(): void {
    try {
      this.refreshProcesses();
      this.refreshTls().catch((e) => log.warn("TLS refresh failed", { error: String(e) }));
      this.refreshApr().catch((e) => log.warn("libapr refresh failed", { error: String(e) }));
      if (++this.ticks % 5 === 0) {
        this.refreshInterfaces().catch((e) => log.warn("interface refresh failed", { error: String(e) }));
      }
    } catch (e) {
      log.warn("process refresh failed", { error: e instanceof Error ? e.message : String(e) });
    }
    const nowNs = (Date.now() - (this.clockOffsetMs ?? 0)) * 1e6;
    this.requests.expire(nowNs);
    this.packets.expire(nowNs);
    this.readKernelDrops();
    this.syncLedger();
  }

  /** Sums the per-CPU drop counters of the BPF side into metrics. */
  readKernelDrops(): void {
    const drops = DropCounters.of(this.map("drops"));
    if (!drops) return;
    for (const [code, name] of Object.entries(DROP_NAMES)) {
      const v = drops.total(Number(code));
      const prev = this.kernelDrops.get(name) ?? 0n;
      // Ring records lost for want of space enter the row ledger too (captured and dropped), so /healthz
      // and the accounting identity see them.
      if (v > prev) this.metrics.kernelDrop(name, Number(v - prev));
      this.kernelDrops.set(name, v);
    }
    for (const l of this.planned?.links ?? []) {
      const missed = (l as { nmissed?: () => number | undefined }).nmissed?.();
      if (missed) {
        const prev = this.kernelDrops.get("kretprobe_missed") ?? 0n;
        if (BigInt(missed) > prev) {
          this.metrics.kernelDrop("kretprobe_missed", missed - Number(prev));
          this.kernelDrops.set("kretprobe_missed", BigInt(missed));
        }
      }
    }
  }

  /** Apache or libapr not there yet: look again every retry_interval_sec, max_retries times. */
  private scheduleAprRetry(): void {
    if (!this.aprLoaded) return; // warned at start
    const { max_retries, retry_interval_sec } = this.cfg.uprobes;
    const t = setInterval(async () => {
      if (this.stopped) return clearInterval(t);
      this.aprRetries++;
      const info = await probeLibapr();
      if (info.path && info.offset !== undefined && this.planned) {
        // Attached (and later re-attached on replacement) the same way as the plan's.
        this.apr ??= this.aprProbes();
        this.apr.paths.add(info.path);
        await this.refreshApr();
        if (this.apr.size) {
          const hook = this.plan.hooks.find((h) => h.hook === "apache");
          if (hook) hook.method = "uprobe";
          log.info("apache uprobes attached after retry", { attempt: this.aprRetries, library: info.path });
          clearInterval(t);
          return;
        }
        this.apr.close();
        this.apr = undefined;
      }
      if (this.aprRetries >= max_retries) {
        log.warn("apache: giving up on uprobes", { retries: this.aprRetries, reason: info.error ?? "" });
        clearInterval(t);
      }
    }, retry_interval_sec * 1000);
    this.timers.push(t);
  }

  /**
   * SIGHUP: re-reads the configuration and applies what can change without a restart (log, privacy);
   * other changed keys are named in a warning. Counters and held rows are untouched.
   */
  async reload(path?: string): Promise<void> {
    const next = await loadConfig(path);
    const changed = changedKeys(this.cfg, next);
    // Only what is really applied below is reported as applied; the rest takes effect at the next start.
    const now = changed.filter((k) => APPLIED_ON_RELOAD.some((p) => k.startsWith(p)));
    const later = changed.filter((k) => !now.includes(k));
    if (now.some((k) => k.startsWith("log."))) {
      configureLog({ level: next.log.level, format: next.log.format });
    }
    if (now.some((k) => k.startsWith("privacy.")) && this.outputs) {
      this.outputs.setRedactor(await makeRedactor(next.privacy));
    }
    this.cfg.log = next.log;
    this.cfg.privacy = next.privacy;
    log.info("configuration reloaded", { applied: now.join(",") || "none", needs_restart: later.join(",") });
    if (later.length) {
      log.warn("configuration changes need a restart to take effect", { keys: later.join(",") });
    }
  }

  /** Detaches everything, flushes held rows and sinks. */
  /**
   * Stops once; a second call (SIGTERM during a fatal-error stop, or the other way round) gets the same
   * promise, so nobody exits before the flush is done.
   */
  stop(): Promise<void> {
    return this.stopping ??= this.stopOnce();
  }

  private async stopOnce(): Promise<void> {
    this.stopped = true;
    // A start-up in progress gives up at its next step; what it attached until then is removed below.
    await this.starting?.catch(() => {});
    for (const t of this.timers) clearInterval(t);
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
    for (const l of this.tcLinks.values()) {
      try {
        l.close();
      } catch { /* interface gone */ }
    }
    this.tcLinks.clear();
    try {
      this.reader?.drain();
    } catch { /* closing anyway */ }
    await this.reader?.close();
    this.planned?.close();
    this.emit(this.correlator.flush());
    await this.outputs?.flush();
    await this.outputs?.close();
    await this.metricsServer?.close();
    this.removeFatalHandler?.();
    // Our filters are detached: another agent may take the handle now.
    this.tcClaim?.release();
    log.info("stopped", { rows: this.correlator.stats().rows_emitted });
  }
}
