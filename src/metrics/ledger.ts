/**
 * Row accounting that makes `captured = shipped + spooled + quarantined + Σ dropped{reason}` true by
 * construction: every captured row sits in exactly one place, and the only way to change a count is to
 * move rows from one place to another in a single synchronous call. A scrape renders synchronously, so it
 * can never observe a row half-moved.
 *
 * "spooled" is every captured row not resolved yet, broken down by stage:
 *   correlate: held by the correlator waiting for packet facts
 *   memory:    in the sink's in-memory batch
 *   spool:     written to the on-disk spool, awaiting a successful insert
 */
import { type Counter, type Gauge, parsePrometheusText, type Registry } from "./registry.ts";

export type Stage = "correlate" | "memory" | "spool";
export const STAGES: readonly Stage[] = ["correlate", "memory", "spool"];
export type DropReason = "ringbuf_full" | "queue_full" | "parse_error" | "oversize" | "spool_full" | string;
export const DROP_REASONS: readonly DropReason[] = [
  "ringbuf_full",
  "queue_full",
  "parse_error",
  "oversize",
  "spool_full",
];

export class RowLedger {
  readonly captured: Counter;
  readonly emitted: Counter;
  readonly shipped: Counter;
  readonly quarantined: Counter;
  readonly dropped: Counter;
  readonly spooled: Gauge;
  readonly pending: Gauge;
  /** Moves asking for more rows than a stage holds: a bug upstream, counted instead of thrown. */
  readonly errors: Counter;
  readonly #stage: Record<Stage, number> = { correlate: 0, memory: 0, spool: 0 };

  constructor(reg: Registry) {
    this.captured = reg.counter(
      "ja4ebpf_rows_captured_total",
      "HTTP requests observed (including those dropped before they became rows)",
    );
    this.emitted = reg.counter(
      "ja4ebpf_rows_emitted_total",
      "rows that left the correlator for the sinks",
    );
    this.shipped = reg.counter("ja4ebpf_rows_shipped_total", "rows acknowledged by the primary sink");
    this.spooled = reg.gauge(
      "ja4ebpf_rows_spooled",
      "captured rows not resolved yet (held for correlation, batched in memory or in the disk spool)",
    ).onCollect(() => this.spooled.set(undefined, this.unresolved()));
    this.pending = reg.gauge("ja4ebpf_rows_pending", "ja4ebpf_rows_spooled by stage", ["stage"]).onCollect(
      () => {
        for (const s of STAGES) this.pending.set({ stage: s }, this.#stage[s]);
      },
    );
    this.quarantined = reg.counter(
      "ja4ebpf_rows_quarantined_total",
      "rows rejected by ClickHouse as bad data and written to the dead-letter file",
    );
    this.dropped = reg.counter("ja4ebpf_rows_dropped_total", "rows lost, by reason", ["reason"]);
    for (const r of DROP_REASONS) this.dropped.touch({ reason: r });
    this.errors = reg.counter(
      "ja4ebpf_accounting_errors_total",
      "ledger moves that asked for more rows than a stage held (a bug; the move was clamped)",
    );
  }

  #take(from: Stage, n: number): number {
    if (!(n > 0)) return 0;
    const k = Math.min(n, this.#stage[from]);
    if (k < n) this.errors.inc(undefined, n - k);
    this.#stage[from] -= k;
    return k;
  }

  /** New rows enter at `stage` (usually "correlate"). */
  capture(n = 1, stage: Stage = "correlate"): void {
    if (!(n > 0)) return;
    this.captured.inc(undefined, n);
    this.#stage[stage] += n;
  }

  /** Requests lost before they became rows (kernel ring full, unparsable): captured and dropped at once. */
  lostBeforeCapture(reason: DropReason, n = 1): void {
    if (!(n > 0)) return;
    this.captured.inc(undefined, n);
    this.dropped.inc({ reason }, n);
  }

  move(from: Stage, to: Stage, n = 1): void {
    const k = this.#take(from, n);
    if (from === "correlate" && to !== "correlate") this.emitted.inc(undefined, k);
    this.#stage[to] += k;
  }

  ship(from: Stage, n = 1): void {
    const k = this.#take(from, n);
    if (from === "correlate") this.emitted.inc(undefined, k);
    this.shipped.inc(undefined, k);
  }

  quarantine(from: Stage, n = 1): void {
    this.quarantined.inc(undefined, this.#take(from, n));
  }

  drop(reason: DropReason, from: Stage, n = 1): void {
    this.dropped.inc({ reason }, this.#take(from, n));
  }

  unresolved(): number {
    return this.#stage.correlate + this.#stage.memory + this.#stage.spool;
  }

  inStage(s: Stage): number {
    return this.#stage[s];
  }

  /** captured − (shipped + spooled + quarantined + Σ dropped): always 0. */
  imbalance(): number {
    return this.captured.get() -
      (this.shipped.get() + this.unresolved() + this.quarantined.get() + this.dropped.sum());
  }
}

/** Reads the identity's terms back from a rendered scrape. */
export function identityFromScrape(text: string): { captured: number; resolved: number } {
  const m = parsePrometheusText(text);
  let dropped = 0;
  for (const [k, v] of m) if (k.startsWith("ja4ebpf_rows_dropped_total{")) dropped += v;
  return {
    captured: m.get("ja4ebpf_rows_captured_total") ?? NaN,
    resolved: (m.get("ja4ebpf_rows_shipped_total") ?? NaN) + (m.get("ja4ebpf_rows_spooled") ?? NaN) +
      (m.get("ja4ebpf_rows_quarantined_total") ?? NaN) + dropped,
  };
}
