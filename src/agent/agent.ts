/**
 * The running agent, wiring only: the kernel side (src/agent/kernel.ts: plan, load, probes, TC, reader) hands
 * each record to onRecord, which decodes it into the one reusable view and passes it to the tracker of its
 * kind; requests leave the tracker as rows for the correlator (RequestSink), rows leave the correlator for
 * the sinks. Plus the timers (follow the servers, expire, flush, read kernel drops), reload and stop.
 *
 * Everything that can fail at start-up fails before the `ready` log line; everything after it is counted.
 */
import type { Config } from "../config/config.ts";
import { log } from "../log.ts";
import { installFatalHandler } from "./fatal.ts";
import { KernelCapture } from "./kernel.ts";
import { reloadConfig } from "./reload.ts";
import type { AttachPlan } from "../bpf/plan.ts";
import { EventView, HOOK_METHODS } from "../bpf/events.ts";
import { EventKind } from "../bpf/layout.gen.ts";
import { RequestTracker } from "../capture/requests.ts";
import { type HelloOut, PacketTracker } from "../capture/packets.ts";
import { processSockets, type ServerKind as Server } from "../capture/procfs.ts";
import { ServerFollower } from "../capture/follow.ts";
import { useLibcryptoSha256 } from "../bpf/sha256.ts";
import { Correlator } from "../correlate/correlator.ts";
import { openOutputs, type OutputSink } from "../sink/mod.ts";
import type { SyncWriter } from "../sink/stdout.ts";
import type { Row } from "../sink/row.ts";
import { AgentMetrics } from "../metrics/agent.ts";
import { type MetricsServer, startMetricsServer } from "../metrics/server.ts";
import { exposedGc, HeapKeeper } from "./heap.ts";
import { pageOutExecutable } from "./pageout.ts";

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

export class Agent {
  readonly metrics: AgentMetrics;
  readonly requests: RequestTracker;
  readonly packets = new PacketTracker();
  /** The web servers' processes and listening ports (src/capture/follow.ts). */
  readonly follow: ServerFollower;
  readonly correlator: Correlator;
  /** Plan, BPF object, probes, TC, reader (src/agent/kernel.ts). */
  readonly kernel: KernelCapture;
  private outputs?: OutputSink;
  private metricsServer?: MetricsServer;
  /** The one reusable view every ring record is decoded into (nothing allocated per event). */
  private readonly view = new EventView();
  /** Events by hook id, published to ja4ebpf_events_total at scrape time (no label lookup per event). */
  private readonly eventCounts: number[] = [];
  /** Capture method per server, resolved from the plan once (not per event). */
  private methods = new Map<string, string>();
  private timers: ReturnType<typeof setInterval>[] = [];
  /** A full collection a minute (src/agent/heap.ts): RSS flat under load that never lets V8's reducer run. */
  private readonly heapKeeper = new HeapKeeper(exposedGc());
  private ticks = 0;
  /**
   * When the executable's pages go back to the page cache once more (at ready, then after the first minute's
   * one-time work — the sinks' first connections, V8's first full collections — and after ten minutes).
   */
  private pageOutAt: number[] = [];
  /** Wall-clock ms minus monotonic ms, estimated from events (smallest difference seen). */
  private clockOffsetMs: number | undefined;
  private clockReads = 0;
  /** Aborted by stop() (with StartAbortedError): start-up and the probes' refreshes attach nothing more. */
  private readonly abort = new AbortController();
  private stopping?: Promise<void>;
  private removeFatalHandler?: () => void;
  /** The running start(), which stop() waits for before tearing down. */
  private starting?: Promise<void>;
  private hostname = Deno.hostname();

  /** Where JA4+'s SHA-256 comes from: libcrypto's file name, or "typescript". */
  private readonly sha256 = useLibcryptoSha256() ?? "typescript";

  constructor(readonly cfg: Config, private readonly opts: AgentOptions = {}) {
    this.follow = new ServerFollower(cfg.uprobes.servers as Server[], cfg.capture.ports);
    this.kernel = new KernelCapture({ cfg, follow: this.follow, signal: this.abort.signal });
    this.metrics = new AgentMetrics();
    this.requests = new RequestTracker({
      request: (row, fd, tsNs, tls, conn) => {
        this.metrics.rows.capture(1);
        // A plaintext (SSL_read) request is TLS; HTTP parsed from the raw socket stream is a plain-HTTP
        // connection, so its row need not wait for a ClientHello that will never come.
        this.correlator.onStreamRequest(conn, row.pid, fd, row, this.wallMs(tsNs), tls);
      },
      hello: (h) => this.onHello(h),
    }, {
      maxStreams: cfg.capture.max_connections,
      maxHead: 64 * 1024,
      // tc reports a ClientHello before the server reads it: the raw stream's copy need not be parsed again.
      knownHello: (key) => this.correlator.hasHello(key),
      // The raw and original-order JA4H forms only when they ship (the privacy filter blanks them otherwise);
      // read per request, so a reload that turns them on applies at once.
      fullJa4h: () => this.cfg.privacy.ship_raw_ja4h,
      gone: (facts) => this.correlator.streamGone(facts),
    });
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
      const rd = this.kernel.readerStats();
      if (rd) {
        this.metrics.ringSize.set(undefined, rd.ringBytes);
        this.metrics.ringBacklogMax.set(undefined, rd.stats.maxBacklog);
        if (rd.ringBytes) this.metrics.ringWakeups.setTotal(undefined, this.kernel.ringWakeups());
      }
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
    this.abort.signal.throwIfAborted();
  }

  private async startUp(): Promise<void> {
    const cfg = this.cfg;
    // Before anything else: a second agent owning our tc handle is refused without touching anything.
    await this.kernel.tc.claim();
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

    await this.kernel.attach();
    // One ring keeps each connection's events in order (per-CPU perf buffers do not): closed connections
    // need not linger for late events.
    this.correlator.opts.orderedEvents = this.kernel.plan.ringbuf;
    this.seedConnections();
    this.kernel.startReader({
      onRecord: (rec) => this.onRecord(rec),
      // Decoded in place in the mapped ring: no view or DataView allocated per record.
      onRecordAt: (area, dv, off, len) => this.onRecordAt(area, dv, off, len),
      // Rows completed by a batch go out at its end, not at the next 100 ms tick (see ReaderOptions.onBatch).
      // Per-CPU perf buffers: a batch is one poll of every CPU's buffer, after which late facts are in.
      onBatch: () => {
        if (!this.correlator.opts.orderedEvents) this.correlator.endOfRound();
        this.flushReady();
      },
    });

    // The tick looks for new workers by /proc unless the kernel follows forks (then it only releases held rows
    // and closed connections, which need no 100 ms precision); every wake-up of the agent costs CPU.
    this.timers.push(setInterval(() => this.tick(), this.follow.followActive ? 250 : 100));
    this.timers.push(setInterval(() => this.slowTick(), 1000));
    this.pageOut();
    this.pageOutAt = [Date.now() + 60_000, Date.now() + 600_000];
    log.info("ready", {
      ...this.kernel.describe(),
      ports: [...this.follow.ports].join(","),
      sha256: this.sha256,
    });
  }

  /** The attach plan start() made (--validate's comparison); benches set one instead of starting. */
  get plan(): AttachPlan {
    return this.kernel.plan;
  }
  set plan(plan: AttachPlan) {
    this.kernel.plan = plan;
  }

  /** Method name put on rows: the hook's chosen method. */
  private methodOf(server: string): string {
    let m = this.methods.get(server);
    if (m === undefined) {
      m = this.kernel.plan.hooks.find((h) => h.hook === server)?.method ?? "";
      // Not kept while unknown: a later attach (Apache's uprobe retry) names the method.
      if (m !== "") this.methods.set(server, m);
    }
    return m;
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
        // The connection's first read carries its client SYN: JA4T is there before its first request (and
        // kept when the read's bytes could not be copied).
        if (ev.hasSyn) this.correlator.onSyn(ev, this.packets.syn(ev), this.wallMs(ev.synTsNs));
        if (ev.readFailed) return;
        const server = this.follow.traced.get(ev.pid) ?? (ev.comm === "nginx" ? "nginx" : "apache");
        ev.server = server;
        ev.capture = ev.plaintext ? "ssl_uprobe" : this.methodOf(server);
        this.requests.push(ev);
        return;
      }
      case EventKind.PKT: {
        const h = this.packets.segment(ev);
        if (h) this.onHello(h);
        return;
      }
      case EventKind.CLOSE: {
        // The record's positions say which of the connection's streams were ever read from.
        const facts = this.requests.close(ev.pid, ev.fd, ev.posRaw !== 0, ev.posPlaintext !== 0);
        if (ev.src_port) this.packets.close(ev);
        this.correlator.onClose(ev.src_port ? ev : null, ev.pid, ev.fd, this.wallMs(ev.tsNs), facts);
        return;
      }
    }
  }

  /** A ClientHello from either side (tc's segment, or a raw TLS stream's read: a CapturedHello is a HelloOut). */
  private onHello(h: HelloOut): void {
    this.correlator.onClientHello(
      h,
      { ja4: h.fp.ja4, ja4_r: h.fp.ja4_r, tls_server_name: h.hello.serverName ?? "" },
      this.wallMs(h.tsNs),
    );
  }

  private tick(): void {
    try {
      this.kernel.followChildren();
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
  private syncLedger(): void {
    this.metrics.syncSinks(this.outputs?.allStats() ?? []);
  }

  private slowTick(): void {
    try {
      this.kernel.refresh(++this.ticks % 5 === 0);
    } catch (e) {
      log.warn("process refresh failed", { error: e instanceof Error ? e.message : String(e) });
    }
    const nowNs = (Date.now() - (this.clockOffsetMs ?? 0)) * 1e6;
    this.requests.expire(nowNs);
    this.packets.expire(nowNs);
    // Ring records lost for want of space enter the row ledger too (captured and dropped), so /healthz and
    // the accounting identity see them.
    this.kernel.readDrops((reason, n) => this.metrics.kernelDrop(reason, n));
    this.syncLedger();
    if (this.heapKeeper.tick(Date.now())) this.metrics.heapCollections.inc();
    if (this.pageOutAt.length && Date.now() >= this.pageOutAt[0]) {
      this.pageOutAt.shift();
      this.pageOut();
    }
  }

  /** The executable's pages back to the page cache (src/agent/pageout.ts); a kernel before 5.4 keeps them. */
  private pageOut(): void {
    try {
      const r = pageOutExecutable();
      if (r.errno) {
        log.debug("executable pages kept", { errno: r.errno });
        return;
      }
      const mib = (kb: number) => (kb / 1024).toFixed(1);
      log.info("executable pages returned", {
        file_mib_before: mib(r.fileKbBefore),
        file_mib_after: mib(r.fileKbAfter),
      });
    } catch (e) {
      log.debug("executable pages kept", { error: e instanceof Error ? e.message : String(e) });
    }
  }

  /**
   * SIGHUP: re-reads the configuration and applies what can change without a restart (log, privacy);
   * other changed keys are named in a warning. Counters and held rows are untouched.
   */
  async reload(path?: string): Promise<void> {
    await reloadConfig(this.cfg, path, this.outputs);
  }

  /**
   * Detaches everything, flushes held rows and sinks. Stops once; a second call (SIGTERM during a fatal-error
   * stop, or the other way round) gets the same promise, so nobody exits before the flush is done.
   */
  stop(): Promise<void> {
    return this.stopping ??= this.stopOnce();
  }

  private async stopOnce(): Promise<void> {
    this.abort.abort(new StartAbortedError());
    // A start-up in progress gives up at its next step; what it attached until then is removed below.
    await this.starting?.catch(() => {});
    for (const t of this.timers) clearInterval(t);
    // Detached first, then the ring drained (into the trackers and the correlator), then the held rows out.
    await this.kernel.close();
    this.emit(this.correlator.flush());
    await this.outputs?.flush();
    await this.outputs?.close();
    await this.metricsServer?.close();
    this.removeFatalHandler?.();
    // Our filters are detached: another agent may take the handle now.
    this.kernel.release();
    log.info("stopped", { rows: this.correlator.stats().rows_emitted });
  }
}
