import { assert } from "../testing/asserts.ts";
import { DEFAULT_CONFIG } from "../config/config.ts";
import { Agent } from "./agent.ts";

Deno.test("stop() runs once: a second caller waits for the same stop", async () => {
  const a = new Agent(structuredClone(DEFAULT_CONFIG));
  const first = a.stop(), second = a.stop();
  assert(first === second, "one promise for every caller");
  await first;
  assert(a.stop() === first, "and after it ended");
});
