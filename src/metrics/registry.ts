/**
 * A tiny metrics registry: counters, gauges and histograms with labels, rendered in the Prometheus text
 * exposition format (version 0.0.4). Rendering is synchronous, so a scrape sees one consistent instant.
 */

export type Labels = Record<string, string>;

/** A metric or label name that Prometheus would reject, or a label set that does not match the metric. */
export class MetricError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MetricError";
  }
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function fmtNum(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

abstract class Metric {
  readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!NAME_RE.test(name)) throw new MetricError(`bad metric name '${name}'`);
    for (const l of labelNames) if (!LABEL_RE.test(l)) throw new MetricError(`bad label name '${l}'`);
    // An unlabelled series exists from the start (0), so scrapes never miss it.
    if (labelNames.length === 0) this.values.set("", { labels: {}, value: 0 });
  }
  abstract readonly type: "counter" | "gauge" | "histogram";

  protected key(labels: Labels | undefined): string {
    // An unlabelled series (counted once per request on the hot path): no object, no array, no join.
    if (labels === undefined && this.labelNames.length === 0) return "";
    const l = labels ?? {};
    const keys = Object.keys(l);
    if (keys.length !== this.labelNames.length || !this.labelNames.every((n) => n in l)) {
      throw new MetricError(`${this.name}: labels {${keys}} do not match {${this.labelNames}}`);
    }
    return this.labelNames.map((n) => l[n]).join("\u0000");
  }

  protected slot(labels: Labels | undefined): { labels: Labels; value: number } {
    const k = this.key(labels);
    let s = this.values.get(k);
    if (!s) {
      s = { labels: { ...labels }, value: 0 };
      this.values.set(k, s);
    }
    return s;
  }

  get(labels?: Labels): number {
    return this.values.get(this.key(labels))?.value ?? 0;
  }

  /** Sum over every label set. */
  sum(): number {
    let s = 0;
    for (const v of this.values.values()) s += v.value;
    return s;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    for (const { labels, value } of this.values.values()) out.push(sample(this.name, labels, value));
  }
}

function sample(name: string, labels: Labels, value: number): string {
  const ls = Object.entries(labels);
  const l = ls.length ? `{${ls.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}` : "";
  return `${name}${l} ${fmtNum(value)}`;
}

export class Counter extends Metric {
  readonly type = "counter";
  inc(labels?: Labels, n = 1): void {
    if (!(n >= 0)) throw new MetricError(`${this.name}: counters only go up (got ${n})`);
    this.slot(labels).value += n;
  }
  /** Mirrors a monotonic total kept elsewhere (e.g. a BPF map); never goes down. */
  setTotal(labels: Labels | undefined, total: number): void {
    const s = this.slot(labels);
    if (total > s.value) s.value = total;
  }
  /** Makes a label set visible at 0 before its first event. */
  touch(labels?: Labels): void {
    this.slot(labels);
  }
}

export class Gauge extends Metric {
  readonly type = "gauge";
  #collect?: () => void;
  set(labels: Labels | undefined, v: number): void {
    this.slot(labels).value = v;
  }
  add(labels: Labels | undefined, n: number): void {
    this.slot(labels).value += n;
  }
  /** A function that refreshes the gauge just before each scrape. */
  onCollect(fn: () => void): this {
    this.#collect = fn;
    return this;
  }
  collect(): void {
    this.#collect?.();
  }
}

export class Histogram extends Metric {
  readonly type = "histogram";
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
    if (labelNames.includes("le")) throw new MetricError(`${name}: 'le' is reserved`);
    if (buckets.some((b, i) => i > 0 && b <= buckets[i - 1])) {
      throw new MetricError(`${name}: buckets unsorted`);
    }
  }
  observe(labels: Labels | undefined, v: number): void {
    const k = this.key(labels);
    let s = this.#series.get(k);
    if (!s) {
      s = { labels: { ...labels }, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]) s.counts[i]++;
    s.sum += v;
    s.count++;
  }
  count(labels?: Labels): number {
    return this.#series.get(this.key(labels))?.count ?? 0;
  }
  override render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} histogram`);
    for (const s of this.#series.values()) {
      this.buckets.forEach((b, i) =>
        out.push(sample(`${this.name}_bucket`, { ...s.labels, le: fmtNum(b) }, s.counts[i]))
      );
      out.push(sample(`${this.name}_bucket`, { ...s.labels, le: "+Inf" }, s.count));
      out.push(sample(`${this.name}_sum`, s.labels, s.sum));
      out.push(sample(`${this.name}_count`, s.labels, s.count));
    }
  }
}

export class Registry {
  readonly #metrics = new Map<string, Metric>();
  #collectors: (() => void)[] = [];

  #add<M extends Metric>(m: M): M {
    if (this.#metrics.has(m.name)) throw new MetricError(`metric '${m.name}' registered twice`);
    this.#metrics.set(m.name, m);
    return m;
  }
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labelNames));
  }
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, labelNames));
  }
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[],
    buckets: readonly number[],
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }
  /** Runs before every render (refresh gauges from live state). */
  onCollect(fn: () => void): void {
    this.#collectors.push(fn);
  }
  get(name: string): Metric | undefined {
    return this.#metrics.get(name);
  }
  /** The Prometheus text format; synchronous, so one scrape is one consistent snapshot. */
  render(): string {
    for (const c of this.#collectors) c();
    const out: string[] = [];
    for (const m of this.#metrics.values()) {
      if (m instanceof Gauge) m.collect();
      m.render(out);
    }
    return out.join("\n") + "\n";
  }
}

/** Parses the text format back into `name{labels}` → value (tests and tools). */
export function parsePrometheusText(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (\S+)$/.exec(line);
    if (!m) throw new MetricError(`unparsable sample line: ${line}`);
    const v = m[2] === "+Inf" ? Infinity : m[2] === "-Inf" ? -Infinity : Number(m[2]);
    out.set(m[1], v);
  }
  return out;
}
