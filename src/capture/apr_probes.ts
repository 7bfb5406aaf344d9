/**
 * Apache's apr_socket_recv uprobes, on every libapr file in use (LibraryProbes: a replaced libapr is probed
 * again). Attached by the attach plan when libapr was there at start (adopt), or, when it was not (Apache
 * installed or started after the agent), by a retry every uprobes.retry_interval_sec, at most
 * uprobes.max_retries times. One retry at a time: the next is scheduled when the previous one has ended. After
 * close() nothing is attached any more, also by a retry or refresh that was under way.
 */
import type { AttachHandle } from "../bpf/object.ts";
import { type LibaprInfo, probeLibapr } from "../bpf/probes.ts";
import { log } from "../log.ts";
import { LibraryProbes, type UprobePair } from "./lib_probes.ts";

/** Apache's apr_socket_recv uprobes. */
export const APR_PROGRAMS: readonly UprobePair[] = [
  ["apr_socket_recv", "uprobe_apr_socket_recv_entry", "uretprobe_apr_socket_recv"],
];
export const programsOf = (pairs: readonly UprobePair[]) => pairs.flatMap(([, entry, ret]) => [entry, ret]);

export interface AprProbesOptions {
  /** Attaches one program at a file offset. */
  attach(program: string, path: string, offset: number, retprobe: boolean): AttachHandle;
  /** The traced Apache processes (read at every refresh). */
  pids(): Iterable<number>;
  /** uprobes.max_retries, uprobes.retry_interval_sec. */
  maxRetries: number;
  retryIntervalSec: number;
  /** Where libapr is now (default: found as the plan finds it: process maps, ld.so.cache, /lib, /usr/lib). */
  locate?: () => Promise<LibaprInfo>;
  /** A retry attached the probes (the plan's Apache hook is uprobe from now on). */
  onRetryAttached?: (library: string) => void;
}

export class AprProbes {
  /** The apr uprobes on every libapr file in use (the located one and those Apache maps), once in use. */
  #apr?: LibraryProbes;
  #retries = 0;
  /** The next retry; undefined while one runs (it schedules the next when it ends) or when none is due. */
  #timer?: ReturnType<typeof setTimeout>;
  #retrying = false;
  #closed = false;

  constructor(readonly opts: AprProbesOptions) {}

  /** Number of probed libapr files. */
  get size(): number {
    return this.#apr?.size ?? 0;
  }

  /** Retries made so far. */
  get retries(): number {
    return this.#retries;
  }

  /** A retry is scheduled or under way. */
  get retrying(): boolean {
    return this.#retrying;
  }

  /** Takes over the uprobes the plan attached to libapr at `path`, so a replaced libapr is probed again. */
  adopt(path: string, links: AttachHandle[]): void {
    if (this.#closed) {
      for (const l of links) l.close();
      return;
    }
    this.#apr = this.#libraryProbes();
    this.#apr.adopt(path, links);
  }

  /** Keeps the apr_socket_recv uprobes on every libapr file in use (see LibraryProbes). */
  refresh(): Promise<void> {
    return this.#closed || !this.#apr ? Promise.resolve() : this.#apr.refresh();
  }

  /** Apache or libapr not there yet: look again every retry_interval_sec, max_retries times. */
  scheduleRetry(): void {
    if (this.#closed || this.#retrying) return;
    this.#retrying = true;
    this.#next();
  }

  /** Detaches everything; no retry or refresh attaches anything after this. */
  close(): void {
    this.#closed = true;
    this.#retrying = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#apr?.close();
  }

  #next(): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#retry().catch((e) => log.warn("libapr retry failed", { error: String(e) })).finally(() => {
        if (!this.#retrying || this.#closed) return;
        if (this.#retries < this.opts.maxRetries) this.#next();
        else this.#retrying = false;
      });
    }, this.opts.retryIntervalSec * 1000);
  }

  /** One attempt; clears #retrying when done (attached, or given up). */
  async #retry(): Promise<void> {
    this.#retries++;
    const info = await (this.opts.locate ?? probeLibapr)();
    if (this.#closed) return; // stopped meanwhile: attach nothing
    if (info.path && info.offset !== undefined) {
      // Attached (and later re-attached on replacement) the same way as the plan's.
      this.#apr ??= this.#libraryProbes();
      this.#apr.paths.add(info.path);
      await this.refresh();
      if (this.#closed) return;
      if (this.#apr.size) {
        this.opts.onRetryAttached?.(info.path);
        log.info("apache uprobes attached after retry", { attempt: this.#retries, library: info.path });
        this.#retrying = false;
        return;
      }
      this.#apr.close();
      this.#apr = undefined;
    }
    if (this.#retries >= this.opts.maxRetries) {
      log.warn("apache: giving up on uprobes", { retries: this.#retries, reason: info.error ?? "" });
      this.#retrying = false;
    }
  }

  #libraryProbes(): LibraryProbes {
    return new LibraryProbes({
      library: /^libapr-1\.so/,
      pairs: APR_PROGRAMS,
      attach: (prog, path, offset, retprobe) => this.opts.attach(prog, path, offset, retprobe),
      pids: () => this.opts.pids(),
      messages: {
        attached: "apache uprobes attached",
        reattached: "apache uprobes re-attached: libapr was replaced",
        detached: "apache uprobes detached: no process maps this libapr any more",
        failed: "apache uprobe attach failed",
      },
    });
  }
}
