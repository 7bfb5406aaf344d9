/**
 * Every metric the agent exports, in one place (docs/operations.md lists them). Modules receive the
 * AgentMetrics object and bump what concerns them; nothing here does I/O.
 */
import { BUILD_KIND, VERSION } from "../version.ts";
import type { CorrelatorStats } from "../correlate/correlator.ts";
import type { SinkObserver, SinkStats } from "../sink/sink.ts";
import { Health, type HealthOptions } from "./health.ts";
import { RowLedger } from "./ledger.ts";
import { type Counter, type Gauge, type Histogram, Registry } from "./registry.ts";

/**
 * Kernel drop reasons (ja4ebpf_bpf_drops_total) after which requests never become rows. `lost_read` counts the
 * lost ring/perf records that began a read (the BPF side tells them from SYN, segment, close and later-chunk
 * records, which lose no request): the unit rows go missing in, so rows + lost reads = requests.
 */
export const ROW_LOSING_KERNEL_DROPS: Record<string, string> = {
  lost_read: "ringbuf_full",
};

/** Sink drop reasons for rows that never reached the spool; the others leave it. */
const MEMORY_DROPS = new Set(["queue_full", "spool_full", "spool_error", "closed", "write_error"]);

/** Seconds; ClickHouse inserts of 10k–100k rows take 15–250 ms on loopback. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class AgentMetrics {
  readonly registry = new Registry();
  readonly rows: RowLedger;
  readonly health: Health;
  /** Events read from the ring buffer, by BPF hook (e.g. nginx_recv, tc_ingress). */
  readonly events: Counter;
  /** Kernel-side drops read from the BPF counters map, by reason (ringbuf_full, chunk_cap, …). */
  readonly bpfDrops: Counter;
  readonly ringWakeups: Counter;
  /** Parser failures, by parser (tls, http1, http2, tcp_options) and kind (invalid, oversize, …). */
  readonly parseErrors: Counter;
  readonly clickhouseErrors: Counter;
  readonly clickhouseLatency: Histogram;
  readonly correlationConnections: Gauge;
  readonly correlationPendingSyns: Gauge;
  readonly correlationHeld: Gauge;
  readonly correlationRows: Counter;
  readonly correlationEvictions: Counter;
  readonly correlationInvalid: Counter;
  readonly correlationMissing: Counter;
  /** The ring buffer's size and the most bytes a drain pass found unread (is capture.ring_size_mb enough?). */
  readonly ringSize: Gauge;
  readonly ringBacklogMax: Gauge;
  readonly rss: Gauge;
  readonly heap: Gauge;
  /** Full collections the agent forced (src/agent/heap.ts). */
  readonly heapCollections: Counter;
  readonly healthy: Gauge;
  readonly sinkLastSuccess: Gauge;
  readonly partialBatches: Counter;
  #correlator?: () => CorrelatorStats;

  constructor(healthOpts: Partial<HealthOptions> = {}, readonly clock: () => number = Date.now) {
    const r = this.registry;
    r.gauge("ja4ebpf_build_info", "version and build kind of the running agent", ["version", "build"])
      .set({ version: VERSION, build: BUILD_KIND }, 1);
    r.gauge("process_start_time_seconds", "start time of the process since the epoch")
      .set(undefined, Math.floor((clock() - performance.now()) / 1000));
    this.rss = r.gauge("process_resident_memory_bytes", "resident set size")
      .onCollect(() => this.rss.set(undefined, Deno.memoryUsage().rss));
    this.heap = r.gauge("ja4ebpf_heap_used_bytes", "V8 heap in use")
      .onCollect(() => this.heap.set(undefined, Deno.memoryUsage().heapUsed));
    this.heapCollections = r.counter(
      "ja4ebpf_heap_collections_total",
      "full V8 collections the agent forced (one a minute when V8 exposes gc: the old generation kept near its live size)",
    );
    this.ringSize = r.gauge("ja4ebpf_ring_size_bytes", "size of the BPF ring buffer (0: perf buffer)");
    this.ringBacklogMax = r.gauge(
      "ja4ebpf_ring_backlog_max_bytes",
      "most bytes the reader found unread in the ring at once since start (near the size: records were lost)",
    );
    this.ringWakeups = r.counter(
      "ja4ebpf_ring_wakeups_total",
      "times the BPF side woke the ring's reader (a record crossed a sixteenth of the ring; under load the reader drains on its timer)",
    );
    this.events = r.counter("ja4ebpf_events_total", "events read from the BPF ring buffer, by hook", [
      "hook",
    ]);
    this.bpfDrops = r.counter(
      "ja4ebpf_bpf_drops_total",
      "events the kernel side could not deliver, by reason",
      [
        "reason",
      ],
    );
    this.parseErrors = r.counter("ja4ebpf_parse_errors_total", "inputs a parser rejected", [
      "parser",
      "kind",
    ]);
    this.rows = new RowLedger(r);
    this.clickhouseErrors = r.counter(
      "ja4ebpf_clickhouse_errors_total",
      "failed ClickHouse inserts, by class (retry, quarantine, auth, network, timeout)",
      ["class"],
    );
    this.clickhouseLatency = r.histogram(
      "ja4ebpf_clickhouse_insert_duration_seconds",
      "ClickHouse insert latency, by outcome",
      ["outcome"],
      LATENCY_BUCKETS,
    );
    this.sinkLastSuccess = r.gauge(
      "ja4ebpf_sink_last_success_timestamp_seconds",
      "time of the last successful write, by sink",
      ["sink"],
    );
    this.partialBatches = r.counter(
      "ja4ebpf_clickhouse_partial_batches_total",
      "ambiguous batches the read-back found only partly in the table (missing rows: dropped{reason=partial})",
    );
    this.correlationConnections = r.gauge("ja4ebpf_correlation_connections", "connections tracked")
      .onCollect(() => this.correlationConnections.set(undefined, this.#correlator?.().connections ?? 0));
    this.correlationPendingSyns = r.gauge(
      "ja4ebpf_correlation_pending_syns",
      "SYNs waiting for their connection's first request or ClientHello (no connection state yet)",
    ).onCollect(() => this.correlationPendingSyns.set(undefined, this.#correlator?.().syns_pending ?? 0));
    this.correlationHeld = r.gauge("ja4ebpf_correlation_held_rows", "rows waiting for packet facts")
      .onCollect(() => this.correlationHeld.set(undefined, this.#correlator?.().held ?? 0));
    this.correlationRows = r.counter(
      "ja4ebpf_correlation_rows_total",
      "rows out of the correlator, by how they left (immediate, facts, timeout, evicted, overflow)",
      ["outcome"],
    );
    this.correlationEvictions = r.counter(
      "ja4ebpf_correlation_evictions_total",
      "connections forgotten, by reason (closed, ttl, lru; syn_only: a SYN nothing followed; fd_reused: close lost)",
      ["reason"],
    );
    this.correlationMissing = r.counter(
      "ja4ebpf_correlation_rows_missing_total",
      "rows shipped without a packet fact they should have had (fact: ja4t, ja4): its record lost or never sent",
      ["fact"],
    );
    this.correlationInvalid = r.counter(
      "ja4ebpf_correlation_invalid_inputs_total",
      "malformed correlator inputs",
    );
    this.health = new Health(
      healthOpts,
      () => ({ captured: this.rows.captured.get(), dropped: this.rows.dropped.sum() }),
    );
    this.healthy = r.gauge("ja4ebpf_healthy", "1 when /healthz reports healthy")
      .onCollect(() => this.healthy.set(undefined, this.health.check(this.clock()).healthy ? 1 : 0));
    r.onCollect(() => this.#syncCorrelator());
  }

  /** Mirrors a correlator's counters at every scrape. */
  watchCorrelator(stats: () => CorrelatorStats): void {
    this.#correlator = stats;
  }

  #syncCorrelator(): void {
    const s = this.#correlator?.();
    if (!s) return;
    const rows: [string, number][] = [
      ["immediate", s.rows_immediate],
      ["facts", s.rows_released_facts],
      ["timeout", s.rows_released_timeout],
      ["evicted", s.rows_released_evicted],
      ["overflow", s.rows_released_overflow],
    ];
    for (const [outcome, v] of rows) this.correlationRows.setTotal({ outcome }, v);
    this.correlationEvictions.setTotal({ reason: "closed" }, s.evicted_closed);
    this.correlationEvictions.setTotal({ reason: "ttl" }, s.evicted_ttl);
    this.correlationEvictions.setTotal({ reason: "lru" }, s.evicted_lru);
    this.correlationEvictions.setTotal({ reason: "syn_only" }, s.syns_unanswered);
    this.correlationEvictions.setTotal({ reason: "fd_reused" }, s.evicted_fd_reused);
    this.correlationInvalid.setTotal(undefined, s.invalid_input);
    this.correlationMissing.setTotal({ fact: "ja4t" }, s.rows_missing_ja4t);
    this.correlationMissing.setTotal({ fact: "ja4" }, s.rows_missing_ja4);
  }

  /** Records an insert: latency by outcome, failing streak for health, last success time. */
  observeInsert(sink: string, seconds: number, ok: boolean, errorClass?: string): void {
    const now = this.clock();
    this.clickhouseLatency.observe({ outcome: ok ? "ok" : "error" }, seconds);
    if (ok) {
      this.health.sinkOk(sink, now);
      this.sinkLastSuccess.set({ sink }, now / 1000);
    } else {
      this.clickhouseErrors.inc({ class: errorClass ?? "retry" });
      this.health.sinkFailed(sink, now);
    }
  }

  /** Kernel drops read from the BPF counters: exported, and those that lose requests enter the ledger. */
  kernelDrop(reason: string, n: number): void {
    if (!(n > 0)) return;
    this.bpfDrops.inc({ reason }, n);
    const lost = ROW_LOSING_KERNEL_DROPS[reason];
    if (lost) this.rows.lostBeforeCapture(lost, n);
  }

  /** Sinks whose requests are observed (their health comes from there, not from their counters). */
  readonly #observed = new Set<string>();
  #seen = {
    replayed: 0,
    sealed: 0,
    shipped: 0,
    quarantined: 0,
    errors: 0,
    dropped: {} as Record<string, number>,
  };

  /** Feeds a sink's requests into latency, errors, last success and health. */
  sinkObserver(): SinkObserver {
    return {
      request: (sink, op, seconds, ok, errorClass) => {
        this.#observed.add(sink);
        if (op === "insert") this.observeInsert(sink, seconds, ok, errorClass);
        else if (!ok) {
          this.clickhouseErrors.inc({ class: errorClass ?? "retry" });
          this.health.sinkFailed(sink, this.clock());
        }
      },
    };
  }

  /**
   * Moves rows through the ledger as the primary sink (ClickHouse, else file, else the first) reports them:
   * replayed rows enter at the spool, sealed rows move memory → spool, shipped and quarantined rows leave the
   * spool (memory for sinks without one), drops leave the stage their reason belongs to. Counters are
   * cumulative, so the order here keeps every stage from going negative.
   */
  syncSinks(all: SinkStats[]): void {
    const st = all.find((s) => s.name === "clickhouse") ?? all.find((s) => s.name === "file") ?? all[0];
    if (!st) return;
    const led = this.rows;
    const seen = this.#seen;
    const delta = (now: number, before: number) => Math.max(0, now - before);
    led.capture(delta(st.replayed, seen.replayed), "spool");
    seen.replayed = Math.max(seen.replayed, st.replayed);
    led.move("memory", "spool", delta(st.sealed ?? 0, seen.sealed));
    seen.sealed = Math.max(seen.sealed, st.sealed ?? 0);
    const out = (n: number, first: "spool" | "memory", f: (from: "spool" | "memory", k: number) => void) => {
      const other = first === "spool" ? "memory" : "spool";
      const k = Math.min(n, led.inStage(first));
      if (k > 0) f(first, k);
      if (n - k > 0) f(other, n - k);
    };
    const shipped = delta(st.shipped, seen.shipped);
    out(shipped, "spool", (from, k) => led.ship(from, k));
    seen.shipped = Math.max(seen.shipped, st.shipped);
    out(delta(st.quarantined, seen.quarantined), "spool", (from, k) => led.quarantine(from, k));
    seen.quarantined = Math.max(seen.quarantined, st.quarantined);
    for (const [reason, n] of Object.entries(st.dropped)) {
      const d = delta(n, seen.dropped[reason] ?? 0);
      if (d > 0) {
        out(d, MEMORY_DROPS.has(reason) ? "memory" : "spool", (from, k) => led.drop(reason, from, k));
      }
      seen.dropped[reason] = Math.max(seen.dropped[reason] ?? 0, n);
    }
    this.partialBatches.setTotal(undefined, st.partial ?? 0);
    const errs = Object.values(st.errors).reduce((a, b) => a + b, 0);
    const now = this.clock();
    if (st.alarm) this.health.sinkFailed(st.name, now);
    else if (!this.#observed.has(st.name)) {
      if (errs > seen.errors) this.health.sinkFailed(st.name, now);
      else if (shipped > 0) this.health.sinkOk(st.name);
    }
    seen.errors = errs;
  }

  render(): string {
    return this.registry.render();
  }
}
