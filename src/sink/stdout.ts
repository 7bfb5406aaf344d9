/** Rows as JSON lines on stdout (the default output). */
import { JsonLinesEncoder } from "./jsonl.ts";
import type { Row } from "./row.ts";
import { copyStats, newStats, type Sink, type SinkStats } from "./sink.ts";

export interface SyncWriter {
  writeSync(p: Uint8Array): number;
}

export class StdoutSink implements Sink {
  #out: SyncWriter;
  #stats = newStats("stdout");
  /** Rows straight to bytes in one reused buffer (written before the next batch reuses it). */
  #jsonl = new JsonLinesEncoder();

  constructor(out: SyncWriter = Deno.stdout) {
    this.#out = out;
  }

  write(rows: Row[]): void {
    if (rows.length === 0) return;
    this.#stats.emitted += rows.length;
    const bytes = this.#jsonl.encode(rows);
    try {
      writeAll(this.#out, bytes);
      this.#stats.shipped += rows.length;
      this.#stats.lastSuccessMs = Date.now();
    } catch {
      // A closed pipe must not kill the agent: count and go on.
      this.#stats.dropped.write_error = (this.#stats.dropped.write_error ?? 0) + rows.length;
    }
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  stats(): SinkStats {
    return copyStats(this.#stats);
  }
}

export function writeAll(w: SyncWriter, p: Uint8Array): void {
  let off = 0;
  while (off < p.length) off += w.writeSync(p.subarray(off));
}
