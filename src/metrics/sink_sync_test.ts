import { assertEquals } from "../testing/asserts.ts";
import { newStats } from "../sink/sink.ts";
import { AgentMetrics } from "./agent.ts";
import { parsePrometheusText } from "./registry.ts";
import { Correlator } from "../correlate/correlator.ts";
import { emptyRow } from "../sink/row.ts";

Deno.test("ledger follows the primary sink: replayed rows enter and leave the spool stage", () => {
  const m = new AgentMetrics();
  const st = newStats("clickhouse");
  const check = (spool: number, memory: number) => {
    m.syncSinks([structuredClone(st)]);
    assertEquals([m.rows.inStage("spool"), m.rows.inStage("memory"), m.rows.imbalance()], [spool, memory, 0]);
    assertEquals(m.rows.errors.get(), 0, "no clamped move");
  };
  // 50 rows left by an earlier process.
  st.replayed = 50;
  check(50, 0);
  // 30 new rows: emitted, then sealed into the spool.
  m.rows.capture(30);
  m.rows.move("correlate", "memory", 30);
  check(50, 30);
  st.sealed = 30;
  check(80, 0);
  // The replayed batches ship first, then one bad batch is quarantined, then 5 rows of a partial batch lost.
  st.shipped = 50;
  check(30, 0);
  st.quarantined = 10;
  st.dropped.partial = 5;
  st.shipped = 65;
  check(0, 0);
  // Rows refused before the spool (full) leave memory.
  m.rows.capture(7);
  m.rows.move("correlate", "memory", 7);
  st.dropped.spool_full = 7;
  check(0, 0);
  assertEquals([m.rows.shipped.get(), m.rows.quarantined.get(), m.rows.dropped.sum()], [65, 10, 12]);
});

Deno.test("kernel ring drops enter the ledger and /healthz", () => {
  const m = new AgentMetrics();
  m.rows.capture(1000);
  assertEquals(m.health.check(Date.now()).healthy, true);
  m.kernelDrop("ringbuf", 130); // records: counted only
  m.kernelDrop("lost_read", 120); // the reads among them: requests lost
  assertEquals([m.rows.captured.get(), m.rows.dropped.get({ reason: "ringbuf_full" })], [1120, 120]);
  assertEquals(m.bpfDrops.get({ reason: "ringbuf" }), 130);
  assertEquals(m.health.check(Date.now()).healthy, false);
});

Deno.test("correlation metrics: SYNs nothing followed and connections whose close was lost are counted", () => {
  const m = new AgentMetrics();
  const c = new Correlator({ host: "h", orderedEvents: true, maxConnections: 4 });
  m.watchCorrelator(() => c.stats());
  const tup = (n: number) => ({ src: `10.0.0.${n}`, src_port: 40000 + n, dst: "10.0.0.100", dst_port: 80 });
  // 6 SYNs no request followed: the newest in hand, 4 slots in the ring, 1 dropped
  for (let n = 1; n <= 6; n++) c.onSyn(tup(n), "ja4t", n);
  c.onRequest(tup(7), 1, 5, { ...emptyRow(), path: "/a" }, 10, false);
  c.onRequest(tup(8), 1, 5, { ...emptyRow(), path: "/b" }, 11, false); // fd 5 again: tup(7)'s close was lost
  const s = parsePrometheusText(m.render());
  assertEquals(
    [
      s.get("ja4ebpf_correlation_pending_syns"),
      s.get('ja4ebpf_correlation_evictions_total{reason="syn_only"}'),
      s.get('ja4ebpf_correlation_evictions_total{reason="fd_reused"}'),
      s.get("ja4ebpf_correlation_connections"),
      s.get('ja4ebpf_correlation_rows_missing_total{fact="ja4t"}'),
      s.get('ja4ebpf_correlation_rows_missing_total{fact="ja4"}'),
    ],
    [5, 1, 1, 1, 2, 0],
  );
});
