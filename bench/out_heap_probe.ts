import { runHotpath } from "./hotpath_bench.ts";
// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const r = await runHotpath(Deno.args[0] ?? "close", 300000);
g.gc();
const m = Deno.memoryUsage();
console.log(
  JSON.stringify({
    total: r.nsPerRequest.total,
    heapUsedMiB: m.heapUsed >> 20,
    heapTotal: m.heapTotal >> 20,
    rss: m.rss >> 20,
  }),
);
const a = g.agent;
console.log(
  JSON.stringify({
    corr: a.correlator.stats().connections,
    bindings: a.correlator.stats().bindings,
    flows: a.packets.stats().flows,
    streams: a.requests.stats().streams,
    closing: a.correlator.queueLengths(),
  }),
);
