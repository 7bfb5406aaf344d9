import { assert, assertEquals } from "../testing/asserts.ts";
import { DEFAULT_CONFIG } from "../config/config.ts";
import { DATA_EVENT, EVENT_HDR, EventFlags, EventKind, Family, Hook, SYN_FACTS } from "../bpf/layout.gen.ts";
import type { AttachPlan } from "../bpf/plan.ts";
import { Agent } from "./agent.ts";

/**
 * A DATA record as the ring carries it: pid 4242 reading fd, client 10.0.0.2:(40000 + fd) to 10.0.0.1:80;
 * `total` the bytes the read returned (more than `body` when the copy failed), `syn` the SYN facts it carries.
 */
function dataRecord(o: {
  hook: number;
  fd: number;
  body: Uint8Array;
  total: number;
  flags?: number;
  pos?: number;
  syn?: { window: number; options: Uint8Array };
}): Uint8Array {
  const F = EVENT_HDR.fields, D = DATA_EVENT.fields, S = SYN_FACTS.fields;
  const b = new Uint8Array(D.data.offset + o.body.length), dv = new DataView(b.buffer);
  dv.setUint8(F.kind.offset, EventKind.DATA);
  dv.setUint8(F.hook.offset, o.hook);
  dv.setUint8(F.family.offset, Family.INET);
  dv.setUint8(F.flags.offset, o.flags ?? 0);
  dv.setUint32(F.pid.offset, 4242, true);
  dv.setInt32(F.fd.offset, o.fd, true);
  b.set([10, 0, 0, 2], F.saddr.offset);
  b.set([10, 0, 0, 1], F.daddr.offset);
  dv.setUint16(F.sport.offset, 40000 + o.fd, true);
  dv.setUint16(F.dport.offset, 80, true);
  dv.setUint32(F.data_len.offset, o.body.length, true);
  dv.setUint32(F.total.offset, o.total, true);
  dv.setBigUint64(D.pos.offset, BigInt(o.pos ?? 0), true);
  if (o.syn) {
    dv.setUint16(D.syn.offset + S.window.offset, o.syn.window, true);
    dv.setUint8(D.syn.offset + S.opt_len.offset, o.syn.options.length);
    b.set(o.syn.options, D.syn.offset + S.options.offset);
  }
  b.set(o.body, D.data.offset);
  return b;
}

Deno.test("stop() runs once: a second caller waits for the same stop", async () => {
  const a = new Agent(structuredClone(DEFAULT_CONFIG));
  const first = a.stop(), second = a.stop();
  assert(first === second, "one promise for every caller");
  await first;
  assert(a.stop() === first, "and after it ended");
});

Deno.test("a server's capture method is not remembered while the plan has none (a later attach names it)", () => {
  const cfg = structuredClone(DEFAULT_CONFIG);
  cfg.capture.hold_ms = 0; // rows out at once
  const a = new Agent(cfg);
  const plan = { hooks: [{ hook: "apache", method: null }] } as unknown as AttachPlan;
  a.plan = plan;
  const http = new TextEncoder().encode("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
  const rec = (fd: number) => dataRecord({ hook: Hook.APR_RECV, fd, body: http, total: http.length });
  a.onRecord(rec(5));
  (plan.hooks[0] as { method: string | null }).method = "uprobe"; // Apache's uprobe retry attached
  a.onRecord(rec(6));
  const rows = a.correlator.takeReady();
  assertEquals(rows.map((r) => [r.server, r.capture]), [["apache", ""], ["apache", "uprobe"]]);
});

Deno.test("a connection's first read carries its SYN: the row has JA4T, also when that read's copy failed", async (t) => {
  const http = new TextEncoder().encode("GET /s HTTP/1.1\r\nHost: a\r\n\r\n");
  const options = Uint8Array.from([2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
  /** A read on fd (client port 40000 + fd) at stream position pos; syn: with the SYN's facts; failed: no bytes. */
  const rec = (fd: number, pos: number, o: { syn?: boolean; failed?: boolean } = {}) =>
    dataRecord({
      hook: Hook.TP_RECVFROM,
      fd,
      body: o.failed ? new Uint8Array(0) : http,
      total: http.length,
      flags: EventFlags.LAST_CHUNK | (o.syn ? EventFlags.SYN : 0) | (o.failed ? EventFlags.READ_FAILED : 0),
      pos,
      syn: o.syn ? { window: 64240, options } : undefined,
    });
  const agent = () => {
    const a = new Agent(structuredClone(DEFAULT_CONFIG));
    a.correlator.opts.orderedEvents = true; // as start() sets it for the ring buffer
    a.plan = { hooks: [{ hook: "nginx", method: "tracepoint" }] } as unknown as AttachPlan;
    return a;
  };
  const JA4T = "64240_2-4-8-1-3_1460_7";
  await t.step("the SYN on the read of the request", () => {
    const a = agent();
    a.onRecord(rec(5, 0, { syn: true }));
    a.onRecord(rec(6, 0)); // tc missed this one's SYN
    assertEquals(a.correlator.takeReady().map((r) => [r.src_port, r.ja4t]), [[40005, JA4T], [40006, ""]]);
  });
  await t.step("the first read's copy failed: its SYN still reaches the next request", () => {
    const a = agent();
    a.onRecord(rec(7, 0, { syn: true, failed: true }));
    a.onRecord(rec(7, http.length));
    assertEquals(a.correlator.takeReady().map((r) => [r.path, r.ja4t]), [["/s", JA4T]]);
  });
});
