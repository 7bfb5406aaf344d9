import { assertEquals, assertStringIncludes } from "./testing/asserts.ts";
import { configureLog, log, setLogSink } from "./log.ts";

Deno.test("log: identical lines are rate-limited with a count, different fields are not", () => {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  configureLog({ level: "info", format: "json", rateLimitMs: 60_000 });
  try {
    for (let i = 0; i < 5; i++) log.error("boom", { what: "same" });
    log.info("attached", { iface: "lo" });
    log.info("attached", { iface: "eth0" });
    log.debug("hidden");
    assertEquals(lines.length, 3);
    assertEquals(JSON.parse(lines[0]).what, "same");
    assertStringIncludes(lines[2], "eth0");
  } finally {
    setLogSink(prev);
    configureLog({ level: "info", format: "plain", rateLimitMs: 10_000 });
  }
});
