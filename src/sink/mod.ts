/**
 * Builds the outputs from the config: the privacy filter in front of stdout, file and ClickHouse sinks.
 * The run command writes rows into the returned sink and scrapes allStats() for metrics.
 */
import { type Config, DEFAULT_IP_KEY_FILE, readClickHousePassword } from "../config/config.ts";
import { ClickHouseSink } from "./clickhouse.ts";
import { FileSink } from "./file.ts";
import { loadIpKey, Redactor } from "./redact.ts";
import type { Row } from "./row.ts";
import { MultiSink, type Sink, type SinkStats } from "./sink.ts";
import { StdoutSink, type SyncWriter } from "./stdout.ts";

export class OutputSink implements Sink {
  #redactor: Redactor;
  readonly sinks: MultiSink;
  constructor(redactor: Redactor, sinks: Sink[]) {
    this.#redactor = redactor;
    this.sinks = new MultiSink(sinks);
  }
  /** Takes ownership of the rows: they are filtered in place, then written. */
  write(rows: Row[]): void {
    this.sinks.write(this.#redactor.applyInPlace(rows));
  }
  /** SIGHUP: new privacy settings apply to the next rows. */
  setRedactor(r: Redactor): void {
    this.#redactor = r;
  }
  flush(): Promise<void> {
    return this.sinks.flush();
  }
  close(): Promise<void> {
    return this.sinks.close();
  }
  stats(): SinkStats {
    return this.sinks.stats();
  }
  allStats(): SinkStats[] {
    return this.sinks.allStats();
  }
}

export async function makeRedactor(privacy: Config["privacy"]): Promise<Redactor> {
  const key = privacy.anonymize_ip ? await loadIpKey(privacy.ip_key_file || DEFAULT_IP_KEY_FILE) : undefined;
  return new Redactor(privacy, key);
}

export async function openOutputs(cfg: Config, o: { stdout?: SyncWriter } = {}): Promise<OutputSink> {
  const sinks: Sink[] = [];
  if (cfg.output.stdout) sinks.push(new StdoutSink(o.stdout));
  const f = cfg.output.file;
  if (f.path) {
    sinks.push(
      new FileSink({ path: f.path, maxSizeBytes: f.max_size_mb * 1024 * 1024, maxFiles: f.max_files }),
    );
  }
  const ch = cfg.output.clickhouse;
  if (ch.url) {
    sinks.push(await ClickHouseSink.open({ config: ch, password: await readClickHousePassword(ch) }));
  }
  return new OutputSink(await makeRedactor(cfg.privacy), sinks);
}
