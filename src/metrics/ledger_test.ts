import { assertEquals } from "../testing/asserts.ts";
import { DROP_REASONS, identityFromScrape, RowLedger, STAGES } from "./ledger.ts";
import { parsePrometheusText, Registry } from "./registry.ts";

Deno.test("ledger", async (t) => {
  await t.step("the identity holds after every one of 20k random moves", () => {
    const reg = new Registry();
    const l = new RowLedger(reg);
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 48271) % 2147483647) % n;
    for (let i = 0; i < 20_000; i++) {
      const from = STAGES[rnd(3)];
      const n = 1 + rnd(50);
      switch (rnd(7)) {
        case 0:
          l.capture(n);
          break;
        case 1:
          l.lostBeforeCapture(DROP_REASONS[rnd(DROP_REASONS.length)], n);
          break;
        case 2:
          l.move(from, STAGES[rnd(3)], n);
          break;
        case 3:
          l.ship(from, n);
          break;
        case 4:
          l.quarantine(from, n);
          break;
        case 5:
          l.drop(DROP_REASONS[rnd(DROP_REASONS.length)], from, n);
          break;
        default:
          l.capture(n, "memory");
      }
      assertEquals(l.imbalance(), 0, `after step ${i}`);
      if (i % 1000 === 0) {
        const s = identityFromScrape(reg.render());
        assertEquals(s.resolved, s.captured);
      }
    }
    // Over-asking moves were clamped and counted, never made a stage negative.
    for (const s of STAGES) assertEquals(l.inStage(s) >= 0, true);
  });

  await t.step("stage breakdown, emitted and clamping", () => {
    const reg = new Registry();
    const l = new RowLedger(reg);
    l.capture(10);
    l.move("correlate", "memory", 6);
    l.move("memory", "spool", 4);
    l.ship("spool", 3);
    l.drop("spool_full", "memory", 1);
    l.quarantine("correlate", 5); // only 4 there
    const m = parsePrometheusText(reg.render());
    assertEquals(
      [
        m.get('ja4ebpf_rows_pending{stage="correlate"}'),
        m.get('ja4ebpf_rows_pending{stage="memory"}'),
        m.get('ja4ebpf_rows_pending{stage="spool"}'),
        m.get("ja4ebpf_rows_spooled"),
        m.get("ja4ebpf_rows_emitted_total"),
        m.get("ja4ebpf_rows_quarantined_total"),
        m.get('ja4ebpf_rows_dropped_total{reason="spool_full"}'),
        m.get('ja4ebpf_rows_dropped_total{reason="ringbuf_full"}'),
        m.get("ja4ebpf_accounting_errors_total"),
      ],
      [0, 1, 1, 2, 6, 4, 1, 0, 1],
    );
    assertEquals(l.imbalance(), 0);
  });
});
