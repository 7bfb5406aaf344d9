/**
 * The packet hook's tc filters: this agent's handle/priority claimed for its lifetime (src/bpf/tc.ts), the
 * filters an agent that died without detaching left with it swept, then the filter attached per capture
 * interface, so a vanishing interface costs only itself. With capture.interfaces auto, interfaces that come
 * up later get the filter too and those that went away are forgotten. close() detaches; release() gives the
 * claim up (after close: another agent may take the handle then).
 */
import { log } from "../log.ts";
import { captureInterfaces } from "../bpf/plan.ts";
import type { AttachHandle, BpfProgram } from "../bpf/object.ts";
import { claimTc, PROBE_TC, sweepTc, type TcClaim, TcHandleBusyError, type TcIdentity } from "../bpf/tc.ts";

export interface TcCaptureOptions {
  /** capture.tc_handle: the handle and the priority of our filters. */
  handle: number;
  /** capture.interfaces: names, or auto (or none): every interface that is up, and loopback. */
  interfaces: readonly string[];
  /** Aborted by a stop: claim() throws its reason, refresh() attaches nothing more. */
  signal?: AbortSignal;
}

export class TcCapture {
  /** This agent's tc handle/priority, held for its lifetime. */
  #claim?: TcClaim;
  /** The loaded tc program; undefined: the packet hook is off (nothing attached). */
  #program?: BpfProgram;
  /** Interfaces with our TC filter, and the filter. */
  readonly #links = new Map<string, AttachHandle>();
  #closed = false;

  constructor(readonly opts: TcCaptureOptions) {}

  /** The interfaces with our filter now. */
  get interfaces(): string[] {
    return [...this.#links.keys()];
  }

  /**
   * Claims this agent's tc handle/priority for its lifetime (a second agent with the same one is refused)
   * and removes the filters with it left on any interface by an agent that died without detaching
   * (SIGKILL), also on interfaces this run will not attach to.
   */
  async claim(): Promise<void> {
    const h = this.opts.handle;
    if (h === PROBE_TC.handle) {
      throw new Error(`capture.tc_handle ${h} (0x${h.toString(16)}) is reserved for the start-up probe`);
    }
    const ours: TcIdentity = { handle: h, priority: h };
    this.#claim = claimTc(ours);
    const ids = [ours];
    // The plan's probe filter: swept when no other agent is probing right now (it holds that claim briefly).
    let probe: TcClaim | undefined;
    for (let i = 0; i < 50 && !probe; i++) {
      try {
        probe = claimTc(PROBE_TC);
      } catch (e) {
        if (!(e instanceof TcHandleBusyError)) throw e;
        await new Promise((r) => setTimeout(r, 100));
        this.opts.signal?.throwIfAborted();
      }
    }
    if (probe) ids.push(PROBE_TC);
    try {
      const { removed, errors } = sweepTc(ids);
      if (removed.length) {
        log.warn("removed tc filters left by an agent that did not stop", {
          filters: removed.map((f) => `${f.iface}:0x${f.handle.toString(16)}`).join(","),
        });
      }
      if (errors.length) log.warn("tc sweep incomplete", { errors: errors.join("; ") });
    } finally {
      probe?.release();
    }
  }

  /** From now on refresh() attaches this program (the packet hook has a method). */
  enable(program: BpfProgram): void {
    this.#program = program;
  }

  /**
   * Attaches the TC program to every capture interface; with capture.interfaces auto, also to interfaces
   * that come up later (and forgets those that went away). A failing interface is logged and skipped.
   */
  async refresh(): Promise<void> {
    if (!this.#program || this.#closed) return;
    const want = this.opts.interfaces;
    const auto = want.length === 0 || want.includes("auto");
    if (!auto && this.#links.size) return;
    const now = new Set(await captureInterfaces(want));
    if (this.#closed || this.opts.signal?.aborted) return; // stopped meanwhile: attach nothing more
    for (const iface of now) {
      if (this.#links.has(iface)) continue;
      try {
        this.#links.set(
          iface,
          this.#program.attachTc({
            iface,
            direction: "ingress",
            handle: this.opts.handle,
            priority: this.opts.handle,
          }),
        );
        log.info("packet capture attached", { interface: iface });
      } catch (e) {
        log.warn("tc attach failed", { interface: iface, error: e instanceof Error ? e.message : String(e) });
      }
    }
    for (const [iface, link] of [...this.#links]) {
      if (!auto || now.has(iface)) continue;
      try {
        link.close();
      } catch { /* the interface and its filters are gone already */ }
      this.#links.delete(iface);
    }
  }

  /** Detaches every filter; later refreshes attach nothing. The claim is kept (see release). */
  close(): void {
    this.#closed = true;
    for (const l of this.#links.values()) {
      try {
        l.close();
      } catch { /* interface gone */ }
    }
    this.#links.clear();
  }

  /** Our filters are detached: another agent may take the handle now. */
  release(): void {
    this.#claim?.release();
  }
}
