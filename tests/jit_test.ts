/**
 * No deoptimization loops on the per-request path, under the V8 flags the agent ships with.
 *
 * A function that V8 optimizes, throws away ("deopt") and optimizes again, over and over, runs mostly
 * unoptimized and pays a compile each time (on the main thread: scripts/agent-v8-flags has
 * --no-concurrent-recompilation). One such loop — the request tracker's position arithmetic fed integers that
 * were small integers from one tier and heap numbers from another — doubled the agent's CPU per keep-alive
 * request and made live figures swing between runs. Here the hot-path benchmark's traffic runs in a child
 * with `--trace-deopt` and each function's deopts are counted: a few while type feedback settles are normal,
 * dozens are a loop.
 */
import { assert } from "../src/testing/asserts.ts";
import { AGENT_V8_FLAGS } from "./helpers/agent.ts";

const BENCH = new URL("../bench/hotpath_bench.ts", import.meta.url).pathname;
/** Most deopts of one function in one mode before it counts as a loop (3 at most seen without one). */
const MAX_PER_FUNCTION = 12;

/** Deopts per function name in V8's --trace-deopt output. */
export function deoptsByFunction(trace: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of trace.matchAll(/deoptimizing 0x[0-9a-f]+ <JSFunction ([^ >]*)/g)) {
    const f = m[1] || "(anonymous)";
    out.set(f, (out.get(f) ?? 0) + 1);
  }
  return out;
}

Deno.test("deoptsByFunction counts a trace's bailouts by function", () => {
  const line = (f: string) =>
    `[bailout (kind: deopt-eager, reason: Smi): begin. deoptimizing 0x0999224c5ab1 <JSFunction ${f} (sfi = 0x2a00897e7291)>, 0x13f8b5515209 <Code MAGLEV>, opt id 54]`;
  const m = deoptsByFunction([line("push"), line("takeInOrder"), line("push"), "unrelated"].join("\n"));
  assert(m.get("push") === 2 && m.get("takeInOrder") === 1 && m.size === 2, JSON.stringify([...m]));
});

Deno.test("the per-request path settles: no function deopts in a loop", async (t) => {
  // keepalive+rowbinary: the ClickHouse sink's encoder as well (the production sink).
  for (const variant of ["keepalive", "close", "tls", "h2", "close-unique", "keepalive+rowbinary"]) {
    const [mode, extra] = variant.split("+");
    await t.step(variant, async () => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `--v8-flags=${AGENT_V8_FLAGS},--trace-deopt`,
          BENCH,
          `--modes=${mode}`,
          "--requests=100000",
          ...(extra ? [`--${extra}`] : []),
        ],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const text = new TextDecoder().decode(r.stdout);
      assert(
        r.success,
        `hotpath_bench ${variant} failed: ${new TextDecoder().decode(r.stderr).slice(-2000)}`,
      );
      // The benchmark really ran (its table row), so an empty trace means no deopts, not no work.
      assert(
        new RegExp(`^\\| ${mode} \\| 100000 \\|`, "m").test(text),
        `no result row:\n${text.slice(-1500)}`,
      );
      const loops = [...deoptsByFunction(text)].filter(([, n]) => n > MAX_PER_FUNCTION);
      assert(loops.length === 0, `deopt loops in ${variant}: ${JSON.stringify(loops)}`);
    });
  }
});
