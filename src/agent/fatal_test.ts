import { assert, assertEquals, assertStringIncludes } from "../testing/asserts.ts";

const FATAL = new URL("./fatal.ts", import.meta.url).href;
const DENO_JSON = new URL("../../deno.json", import.meta.url).pathname;

/**
 * A process that installs the handler with `stop` (a function body), then runs `fault`; it prints "still
 * running" after 5 s if nothing ended it. Returns its exit code, output and how long it ran.
 */
async function run(stop: string, fault: string, graceMs = 25_000) {
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-fatal-" });
  try {
    const file = `${dir}/child.ts`;
    await Deno.writeTextFile(
      file,
      `import { installFatalHandler } from ${JSON.stringify(FATAL)};
let stops = 0;
const uninstall = installFatalHandler(async () => { stops++; ${stop} }, undefined, ${graceMs});
${fault}
setTimeout(() => console.log("still running"), 5000);
`,
    );
    const t0 = performance.now();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", DENO_JSON, file],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      ms: performance.now() - t0,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SLOW_STOP = `await new Promise((r) => setTimeout(r, 50)); console.log("stopped", stops);`;

Deno.test("installFatalHandler: an uncaught error stops once, then exits 1; a hanging stop is cut short", async (t) => {
  // [name, stop body, fault, grace ms, exit code, stdout, stderr must include]
  const cases: [string, string, string, number, number, string, string][] = [
    [
      "a throw in a timer",
      SLOW_STOP,
      "setTimeout(() => { throw new Error('boom'); }, 10);",
      25_000,
      1,
      "stopped 1\n",
      "uncaught error: stopping",
    ],
    [
      "an unhandled rejection",
      SLOW_STOP,
      "Promise.reject(new Error('boom'));",
      25_000,
      1,
      "stopped 1\n",
      "boom",
    ],
    [
      "a second error while stopping: one stop",
      SLOW_STOP,
      "Promise.reject(new Error('one')); setTimeout(() => { throw new Error('two'); }, 10);",
      25_000,
      1,
      "stopped 1\n",
      "two",
    ],
    [
      "a stop that fails: still exit 1",
      "throw new Error('no flush');",
      "Promise.reject(new Error('boom'));",
      25_000,
      1,
      "",
      "stop failed",
    ],
    [
      "a stop that hangs: exit 1 after the grace period",
      "await new Promise(() => {});",
      "Promise.reject(new Error('boom'));",
      300,
      1,
      "",
      "boom",
    ],
    [
      "uninstalled: no stop, Deno's own exit",
      SLOW_STOP,
      "uninstall(); Promise.reject(new Error('boom'));",
      25_000,
      1,
      "",
      "Uncaught",
    ],
  ];
  for (const [name, stop, fault, graceMs, code, stdout, stderr] of cases) {
    await t.step(name, async () => {
      const r = await run(stop, fault, graceMs);
      assertEquals([r.code, r.stdout], [code, stdout], r.stderr.slice(-1500));
      assertStringIncludes(r.stderr, stderr);
      if (code === 1) assert(r.ms < 4500, `ended by the handler, not the 5 s timer (${Math.round(r.ms)} ms)`);
    });
  }
});
