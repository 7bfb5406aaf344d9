/**
 * Rows as JSON lines in a file (mode 0600), rotated by size: path → path.1 → … → path.N (oldest removed).
 * fsync on rotation and close.
 */
import { JsonLinesEncoder } from "./jsonl.ts";
import type { Row } from "./row.ts";
import { copyStats, countInto, newStats, type Sink, type SinkStats } from "./sink.ts";
import { writeAll } from "./stdout.ts";

export interface FileSinkOptions {
  path: string;
  maxSizeBytes: number;
  maxFiles: number;
}

export class FileSink implements Sink {
  #o: FileSinkOptions;
  #f: Deno.FsFile | undefined;
  #size = 0;
  #stats = newStats("file");
  /** Rows straight to bytes in one reused buffer (written before the next batch reuses it). */
  #jsonl = new JsonLinesEncoder();

  constructor(o: FileSinkOptions) {
    this.#o = o;
    this.#open();
  }

  #open(): void {
    this.#f = Deno.openSync(this.#o.path, { append: true, create: true, mode: 0o600 });
    // mode applies only on creation: an existing file is tightened too.
    Deno.chmodSync(this.#o.path, 0o600);
    this.#size = this.#f.statSync().size;
  }

  #rotate(): void {
    this.#f?.syncSync();
    this.#f?.close();
    this.#f = undefined;
    const p = this.#o.path;
    for (let i = this.#o.maxFiles; i >= 1; i--) {
      const from = i === 1 ? p : `${p}.${i - 1}`;
      try {
        Deno.renameSync(from, `${p}.${i}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    this.#open();
  }

  write(rows: Row[]): void {
    if (rows.length === 0) return;
    this.#stats.emitted += rows.length;
    try {
      const bytes = this.#jsonl.encode(rows);
      if (this.#size > 0 && this.#size + bytes.length > this.#o.maxSizeBytes) this.#rotate();
      if (!this.#f) this.#open();
      writeAll(this.#f!, bytes);
      this.#size += bytes.length;
      this.#stats.shipped += rows.length;
      this.#stats.lastSuccessMs = Date.now();
    } catch {
      countInto(this.#stats.dropped, "write_error", rows.length);
      try {
        this.#f?.close();
      } catch { /* already closed */ }
      this.#f = undefined; // reopened on the next write
    }
  }

  flush(): Promise<void> {
    try {
      this.#f?.syncSync();
    } catch { /* counted on the next write */ }
    return Promise.resolve();
  }

  close(): Promise<void> {
    try {
      this.#f?.syncSync();
      this.#f?.close();
    } catch { /* nothing left to save */ }
    this.#f = undefined;
    return Promise.resolve();
  }

  stats(): SinkStats {
    return copyStats(this.#stats);
  }
}
