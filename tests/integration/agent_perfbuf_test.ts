/**
 * The agent with the perf buffer forced (`capture.ringbuf: perfbuf`, the path of kernels without ring
 * buffers): every probe load and the final load must run with `use_ringbuf = 0`, else the live branch names
 * the uncreated `events` ring buffer and every method is refused with EINVAL. nginx on loopback, curl, one
 * row per request with the right path, `buffer=perfbuf` in the ready line. Needs root, nginx and curl.
 */
import { assert, assertEquals, assertStringIncludes } from "../../src/testing/asserts.ts";
import { startAgent } from "../helpers/agent.ts";
import { startNginx } from "../helpers/servers.ts";
import { curl } from "../helpers/clients.ts";

const NGINX = 30080;
const METRICS = 30435;

Deno.test("agent: capture.ringbuf perfbuf loads every hook and captures nginx requests", async () => {
  await using srv = await startNginx({ port: NGINX, workers: 1 });
  await using agent = await startAgent({
    metricsPort: METRICS,
    config: {
      capture: { ringbuf: "perfbuf", nginx: "tracepoint", ports: [NGINX] },
      // No SSL uprobes: other agents' HTTPS load tests on this host would fill the small perf buffer.
      uprobes: { servers: ["nginx"], enabled: false },
    },
  });
  assertStringIncludes(agent.readyLine, "buffer=perfbuf", agent.readyLine);
  assertEquals(agent.capture.nginx, "tracepoint", agent.readyLine);
  // nginx ran before the agent: the start-up /proc scan traces it before `ready`. Other nginx processes on
  // the host are traced too: a round lost to their load must show as perf buffer drops, then we retry.
  let captured: string[] = [];
  for (let round = 0; round < 3 && captured.length === 0; round++) {
    const paths = [`/perf-${round}-one`, `/perf-${round}-two`, `/perf-${round}-three`];
    const dropsBefore = (await agent.metrics()).get('ja4ebpf_bpf_drops_total{reason="perfbuf"}') ?? 0;
    for (const p of paths) {
      const r = await curl(["-o", "/dev/null", "-w", "%{http_code}", `http://${srv.host}:${srv.port}${p}`]);
      assertEquals([r.code, r.stdout], [0, "200"], r.stderr);
    }
    try {
      const rows = await agent.waitForRows((r) => paths.includes(r.path), paths.length, 15_000);
      captured = rows.map((r) => r.path).sort();
      assertEquals(captured, [...paths].sort());
      for (const r of rows) assert(r.ja4h && r.dst_port === NGINX, `row: ${JSON.stringify(r)}`);
    } catch (e) {
      const dropsAfter = (await agent.metrics()).get('ja4ebpf_bpf_drops_total{reason="perfbuf"}') ?? 0;
      if (dropsAfter === dropsBefore) {
        throw new Error(
          `round ${round}: rows missing without perf buffer drops: ${e}\n${agent.stderr().slice(-3000)}`,
        );
      }
    }
  }
  assert(captured.length > 0, "three rounds all lost to perf buffer drops");
});
