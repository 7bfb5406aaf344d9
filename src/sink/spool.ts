/**
 * The on-disk queue of batches not yet acknowledged: one gzip file per batch, written to a temporary name,
 * fsynced and renamed (so a crash leaves either the whole batch or nothing), the directory fsynced, removed
 * only after the destination acknowledged it. Files are named so that a restart can list them in order
 * without reading them:  <seq>-<generation>-<date>-<rows>-<batch id>.<format>.gz, format `rowbinary` (this
 * version) or `jsonl` (JSONEachRow: earlier versions, and batches written while the table takes only that).
 * Bad-data batches move to dead/ with a .reason file next to them; dead/ is capped too (a batch that would pass
 * the cap is deleted instead, and the caller counts its rows as dropped).
 */
export interface SpoolEntry {
  seq: number;
  gen: string;
  date: string;
  rows: number;
  id: string;
  /** The body's format, named in the file (files of earlier versions are jsonl). */
  format: SpoolFormat;
  bytes: number;
  path: string;
}

export type SpoolFormat = "rowbinary" | "jsonl";

/** Where a batch sent to dead/ went. */
export type DeadResult = { kept: true; path: string } | {
  kept: false;
  why: "dead_full" | "dead_error";
  error?: string;
};

const NAME = /^(\d{12})-([a-z]+)-(\d{4}-\d{2}-\d{2})-(\d+)-([0-9a-f]{16,64})\.(rowbinary|jsonl)\.gz$/;

export class Spool {
  readonly dir: string;
  readonly deadDir: string;
  readonly maxBytes: number;
  readonly deadMaxBytes: number;
  #deadBytes = 0;
  #entries: SpoolEntry[] = [];
  #bytes = 0;
  #rows = 0;
  #seq = 0;

  private constructor(dir: string, maxBytes: number, deadMaxBytes: number) {
    this.dir = dir;
    this.deadDir = `${dir}/dead`;
    this.maxBytes = maxBytes;
    this.deadMaxBytes = deadMaxBytes;
  }

  /** Opens (creating, mode 0700) the spool and lists the batches left by an earlier process, oldest first. */
  static async open(dir: string, maxBytes: number, deadMaxBytes = Infinity): Promise<Spool> {
    const s = new Spool(dir, maxBytes, deadMaxBytes);
    await Deno.mkdir(s.deadDir, { recursive: true, mode: 0o700 });
    await Deno.chmod(dir, 0o700);
    for await (const e of Deno.readDir(s.deadDir)) {
      if (e.isFile) {
        s.#deadBytes += (await Deno.stat(`${s.deadDir}/${e.name}`).catch(() => ({ size: 0 }))).size;
      }
    }
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile) continue;
      if (e.name.startsWith(".tmp-")) {
        // A batch whose write did not finish: it was never acknowledged to anyone, nothing to keep.
        await Deno.remove(`${dir}/${e.name}`).catch(() => {});
        continue;
      }
      const m = NAME.exec(e.name);
      if (!m) continue;
      const path = `${dir}/${e.name}`;
      const st = await Deno.stat(path);
      s.#entries.push({
        seq: Number(m[1]),
        gen: m[2],
        date: m[3],
        rows: Number(m[4]),
        id: m[5],
        format: m[6] as SpoolFormat,
        bytes: st.size,
        path,
      });
    }
    s.#entries.sort((a, b) => a.seq - b.seq);
    for (const e of s.#entries) {
      s.#bytes += e.bytes;
      s.#rows += e.rows;
      s.#seq = Math.max(s.#seq, e.seq);
    }
    return s;
  }

  get bytes(): number {
    return this.#bytes;
  }
  get deadBytes(): number {
    return this.#deadBytes;
  }
  get rows(): number {
    return this.#rows;
  }
  get length(): number {
    return this.#entries.length;
  }
  /** Oldest batch, or undefined when empty. */
  head(): SpoolEntry | undefined {
    return this.#entries[0];
  }
  entries(): readonly SpoolEntry[] {
    return this.#entries;
  }

  /** Durably stores a batch. Returns undefined (nothing written) when it would pass the cap. */
  async put(
    gen: string,
    date: string,
    rows: number,
    id: string,
    body: Uint8Array,
    format: SpoolFormat,
  ): Promise<SpoolEntry | undefined> {
    if (this.#bytes + body.length > this.maxBytes) return undefined;
    const seq = ++this.#seq;
    const name = `${String(seq).padStart(12, "0")}-${gen}-${date}-${rows}-${id}.${format}.gz`;
    const tmp = `${this.dir}/.tmp-${name}`;
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
    try {
      let off = 0;
      while (off < body.length) off += await f.write(body.subarray(off));
      await f.syncData();
    } finally {
      f.close();
    }
    const path = `${this.dir}/${name}`;
    await Deno.rename(tmp, path);
    await syncDir(this.dir);
    const e: SpoolEntry = { seq, gen, date, rows, id, format, bytes: body.length, path };
    this.#entries.push(e);
    this.#bytes += e.bytes;
    this.#rows += e.rows;
    return e;
  }

  async read(e: SpoolEntry): Promise<Uint8Array> {
    return await Deno.readFile(e.path);
  }

  /**
   * The batch was acknowledged: it leaves the queue even when the file cannot be deleted (the error is thrown
   * after), since resending it would duplicate it; a file left behind is read back, not resent, on restart.
   */
  async remove(e: SpoolEntry): Promise<void> {
    try {
      await Deno.remove(e.path).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
    } finally {
      this.forget(e);
    }
  }

  /**
   * Moves a batch to dead/ with the reason beside it. It leaves the queue whatever happens: kept, deleted
   * because dead/ is full, or left in place after an I/O error (the caller counts the last two as dropped).
   */
  async quarantine(e: SpoolEntry, reason: string): Promise<DeadResult> {
    try {
      const note = new TextEncoder().encode(reason.slice(0, 4000) + "\n");
      if (this.#deadBytes + e.bytes + note.length > this.deadMaxBytes) {
        await Deno.remove(e.path).catch(() => {});
        return { kept: false, why: "dead_full" };
      }
      const name = e.path.slice(e.path.lastIndexOf("/") + 1);
      const dest = `${this.deadDir}/${name}`;
      await Deno.rename(e.path, dest);
      await Deno.writeFile(`${dest}.reason`, note, { mode: 0o600 });
      this.#deadBytes += e.bytes + note.length;
      await syncDir(this.dir);
      return { kept: true, path: dest };
    } catch (err) {
      // Left where it is: this process gives up on it (counted), the next start replays it.
      return { kept: false, why: "dead_error", error: String(err) };
    } finally {
      this.forget(e);
    }
  }

  /** Drops the entry from the queue (not the file). */
  forget(e: SpoolEntry): void {
    const i = this.#entries.indexOf(e);
    if (i < 0) return;
    this.#entries.splice(i, 1);
    this.#bytes -= e.bytes;
    this.#rows -= e.rows;
  }
}

async function syncDir(dir: string): Promise<void> {
  // The rename is durable only once the directory entry is; not every filesystem allows fsync on a directory.
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* best effort */ }
}
