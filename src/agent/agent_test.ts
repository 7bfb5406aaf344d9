import { assert, assertEquals } from "../testing/asserts.ts";
import { DEFAULT_CONFIG } from "../config/config.ts";
import { DATA_EVENT, EVENT_HDR, EventKind, Family, Hook } from "../bpf/layout.gen.ts";
import type { AttachPlan } from "../bpf/plan.ts";
import { Agent } from "./agent.ts";

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
  const rec = (fd: number) => {
    const F = EVENT_HDR.fields, D = DATA_EVENT.fields;
    const b = new Uint8Array(D.data.offset + http.length), dv = new DataView(b.buffer);
    dv.setUint8(F.kind.offset, EventKind.DATA);
    dv.setUint8(F.hook.offset, Hook.APR_RECV);
    dv.setUint8(F.family.offset, Family.INET);
    dv.setUint32(F.pid.offset, 4242, true);
    dv.setInt32(F.fd.offset, fd, true);
    b.set([10, 0, 0, 2], F.saddr.offset);
    b.set([10, 0, 0, 1], F.daddr.offset);
    dv.setUint16(F.sport.offset, 40000 + fd, true);
    dv.setUint16(F.dport.offset, 80, true);
    dv.setUint32(F.data_len.offset, http.length, true);
    dv.setUint32(F.total.offset, http.length, true);
    b.set(http, D.data.offset);
    return b;
  };
  a.onRecord(rec(5));
  (plan.hooks[0] as { method: string | null }).method = "uprobe"; // Apache's uprobe retry attached
  a.onRecord(rec(6));
  const rows = a.correlator.takeReady();
  assertEquals(rows.map((r) => [r.server, r.capture]), [["apache", ""], ["apache", "uprobe"]]);
});
