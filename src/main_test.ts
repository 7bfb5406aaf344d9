import { assert, assertEquals } from "./testing/asserts.ts";
import { main } from "./main.ts";

Deno.test("cli", async (t) => {
  const cases: { args: string[]; code: number }[] = [
    { args: ["version"], code: 0 },
    { args: ["version", "--help"], code: 0 },
    { args: ["version", "--bogus"], code: 2 },
    { args: ["nosuch"], code: 2 },
    { args: [], code: 2 },
  ];
  for (const c of cases) {
    await t.step(c.args.join(" ") || "(none)", async () => {
      assertEquals(await main(c.args), c.code);
    });
  }
});

Deno.test("unknown flag is named in the error", async () => {
  const errs: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => errs.push(a.join(" "));
  try {
    assertEquals(await main(["version", "--frobnicate"]), 2);
  } finally {
    console.error = orig;
  }
  assert(errs.join("\n").includes("--frobnicate"), errs.join("\n"));
});
