import { assertEquals, assertStringIncludes, assertThrows } from "../testing/asserts.ts";
import { MetricError, parsePrometheusText, Registry } from "./registry.ts";

Deno.test("registry", async (t) => {
  await t.step("renders counters, gauges and histograms in the text format", () => {
    const r = new Registry();
    const c = r.counter("x_total", "things\nseen", ["kind"]);
    c.inc({ kind: 'a"b\\c' }, 2);
    c.inc({ kind: "z" });
    r.gauge("g", "a gauge").set(undefined, -1.5);
    const h = r.histogram("lat_seconds", "latency", [], [0.1, 1]);
    h.observe(undefined, 0.05);
    h.observe(undefined, 0.5);
    h.observe(undefined, 5);
    const text = r.render();
    assertStringIncludes(text, "# HELP x_total things\\nseen\n# TYPE x_total counter\n");
    assertStringIncludes(text, 'x_total{kind="a\\"b\\\\c"} 2\n');
    const m = parsePrometheusText(text);
    assertEquals(m.get('x_total{kind="z"}'), 1);
    assertEquals(m.get("g"), -1.5);
    assertEquals(
      ["0.1", "1", "+Inf"].map((le) => m.get(`lat_seconds_bucket{le="${le}"}`)),
      [1, 2, 3],
    );
    assertEquals(m.get("lat_seconds_count"), 3);
    assertEquals(m.get("lat_seconds_sum"), 5.55);
  });

  await t.step("rejects bad names, wrong labels, decreasing counters", () => {
    const r = new Registry();
    const table: [string, () => unknown][] = [
      ["bad metric name", () => r.counter("9bad", "")],
      ["bad label name", () => r.counter("ok_total", "", ["a-b"])],
      ["do not match", () => r.counter("c1_total", "", ["a"]).inc({ b: "x" })],
      ["do not match", () => r.counter("c2_total", "").inc({ a: "x" })],
      ["only go up", () => r.counter("c3_total", "").inc(undefined, -1)],
      ["registered twice", () => (r.gauge("dup", ""), r.gauge("dup", ""))],
      ["reserved", () => r.histogram("h", "", ["le"], [1])],
    ];
    for (const [msg, fn] of table) assertThrows(fn, MetricError, msg);
  });

  await t.step("setTotal never goes down; collectors refresh gauges at render", () => {
    const r = new Registry();
    const c = r.counter("k_total", "");
    c.setTotal(undefined, 5);
    c.setTotal(undefined, 3);
    assertEquals(c.get(), 5);
    let n = 0;
    const g = r.gauge("live", "").onCollect(() => g.set(undefined, ++n));
    r.render();
    assertEquals(parsePrometheusText(r.render()).get("live"), 2);
  });
});
