/**
 * Health verdict for /healthz: unhealthy when a sink has been failing for longer than `sinkFailureMaxMs`,
 * or when drops in the last `windowMs` exceed `dropRatioMax` of what was captured (and at least
 * `dropMinCount`, so a single early drop does not flap the check).
 */
export interface HealthOptions {
  sinkFailureMaxMs: number;
  dropRatioMax: number;
  dropMinCount: number;
  windowMs: number;
}

export const DEFAULT_HEALTH_OPTIONS: HealthOptions = {
  sinkFailureMaxMs: 60_000,
  dropRatioMax: 0.01,
  dropMinCount: 100,
  windowMs: 60_000,
};

export interface HealthReport {
  healthy: boolean;
  reasons: string[];
  /** Per sink: ms since its first failure in the current failing streak (0 = fine). */
  sinks: Record<string, number>;
  window: { captured: number; dropped: number };
}

export class Health {
  readonly opts: HealthOptions;
  /** sink → time of the first failure since its last success. */
  readonly #failingSince = new Map<string, number>();
  #samples: { t: number; captured: number; dropped: number }[] = [];

  constructor(
    opts: Partial<HealthOptions> = {},
    /** Totals of captured and dropped rows (monotonic). */
    readonly totals: () => { captured: number; dropped: number } = () => ({ captured: 0, dropped: 0 }),
  ) {
    this.opts = { ...DEFAULT_HEALTH_OPTIONS, ...opts };
  }

  sinkFailed(sink: string, now: number): void {
    if (!this.#failingSince.has(sink)) this.#failingSince.set(sink, now);
  }

  sinkOk(sink: string, _now?: number): void {
    this.#failingSince.delete(sink);
  }

  /** Records a sample of the totals; call periodically (each check does too). */
  sample(now: number): void {
    const t = this.totals();
    const last = this.#samples[this.#samples.length - 1];
    // One sample per second is plenty; keeps the array small under a tight scrape loop.
    if (last && now - last.t < 1000) return;
    this.#samples.push({ t: now, ...t });
    const cutoff = now - this.opts.windowMs;
    let i = 0;
    // Keep one sample at or before the cutoff as the window's baseline.
    while (i + 1 < this.#samples.length && this.#samples[i + 1].t <= cutoff) i++;
    if (i > 0) this.#samples = this.#samples.slice(i);
  }

  check(now: number): HealthReport {
    this.sample(now);
    const reasons: string[] = [];
    const sinks: Record<string, number> = {};
    for (const [sink, since] of this.#failingSince) {
      const ms = Math.max(0, now - since);
      sinks[sink] = ms;
      if (ms > this.opts.sinkFailureMaxMs) {
        reasons.push(`sink ${sink} failing for ${Math.round(ms / 1000)} s`);
      }
    }
    const cur = this.totals();
    const base = this.#samples[0] ?? { captured: cur.captured, dropped: cur.dropped };
    const captured = cur.captured - base.captured;
    const dropped = cur.dropped - base.dropped;
    if (dropped >= this.opts.dropMinCount && dropped > this.opts.dropRatioMax * captured) {
      reasons.push(
        `dropped ${dropped} of ${captured} rows in the last ${Math.round(this.opts.windowMs / 1000)} s`,
      );
    }
    return { healthy: reasons.length === 0, reasons, sinks, window: { captured, dropped } };
  }
}
