import { assert, assertEquals, assertMatch, assertRejects } from "../testing/asserts.ts";
import { stringify } from "yaml";
import { type Config, DEFAULT_CONFIG, loadConfig, RELOADABLE } from "../config/config.ts";
import { schemaKeys } from "../config/schema.ts";
import { configureLog, setLogSink } from "../log.ts";
import { openOutputs } from "../sink/mod.ts";
import { emptyRow } from "../sink/row.ts";
import { APPLIED_ON_RELOAD, reloadConfig, reloadKeys } from "./reload.ts";

/** The defaults with some keys changed (dotted key → value). */
function withKeys(changes: Record<string, unknown>): Config {
  const c = structuredClone(DEFAULT_CONFIG) as Config;
  for (const [key, v] of Object.entries(changes)) {
    const path = key.split(".");
    const last = path.pop()!;
    (path.reduce((o: Record<string, unknown>, k) => o[k] as Record<string, unknown>, c) as Record<
      string,
      unknown
    >)[
      last
    ] = v;
  }
  return c;
}

Deno.test("reloadKeys: logging and privacy apply now, every other change at the next start", async (t) => {
  const cases: [string, Record<string, unknown>, string[], string[]][] = [
    ["nothing changed", {}, [], []],
    ["log level and format", { "log.level": "debug", "log.format": "json" }, ["log.level", "log.format"], []],
    ["query strings kept", { "privacy.strip_query": false }, ["privacy.strip_query"], []],
    ["the hold time", { "capture.hold_ms": 900 }, [], ["capture.hold_ms"]],
    [
      "sink and capture keys beside privacy",
      {
        "privacy.ship_raw_ja4h": true,
        "output.clickhouse.batch_rows": 500,
        "capture.interfaces": ["lo"],
        "uprobes.max_retries": 3,
      },
      ["privacy.ship_raw_ja4h"],
      ["uprobes.max_retries", "capture.interfaces", "output.clickhouse.batch_rows"],
    ],
  ];
  for (const [name, changes, now, later] of cases) {
    await t.step(name, () => {
      const got = reloadKeys(structuredClone(DEFAULT_CONFIG) as Config, withKeys(changes));
      assertEquals([got.now, [...got.later].sort()], [now, [...later].sort()]);
    });
  }
});

Deno.test("APPLIED_ON_RELOAD covers exactly the keys the schema marks reloadable", () => {
  const applied = schemaKeys().map((k) => k.key).filter((k) =>
    APPLIED_ON_RELOAD.some((p) => k.startsWith(p))
  );
  assertEquals(applied.sort(), [...RELOADABLE].sort());
});

Deno.test("reloadConfig: the next rows get the new privacy filter, the running config keeps restart-only keys", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "ja4ebpf-reload-" });
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  const path = `${dir}/config.yaml`;
  const base = { capture: { hold_ms: 300 }, output: { stdout: false, file: { path: `${dir}/rows.jsonl` } } };
  await Deno.writeTextFile(path, stringify(base));
  const cfg = await loadConfig(path);
  const outputs = await openOutputs(cfg);
  const written = async (path: string) => {
    const row = emptyRow();
    row.path = path;
    outputs.write([row]);
    await outputs.flush();
    const text = await Deno.readTextFile(`${dir}/rows.jsonl`);
    return JSON.parse(text.trim().split("\n").at(-1)!).path;
  };
  try {
    await t.step("before: query strings stripped", async () => assertEquals(await written("/a?b=1"), "/a"));

    await t.step("privacy and log applied, the hold time named as needing a restart", async () => {
      await Deno.writeTextFile(
        path,
        stringify({
          ...base,
          capture: { hold_ms: 900 },
          privacy: { strip_query: false },
          log: { level: "debug" },
        }),
      );
      const got = await reloadConfig(cfg, path, outputs);
      assertEquals(got, { now: ["privacy.strip_query", "log.level"], later: ["capture.hold_ms"] });
      assertEquals([cfg.log.level, cfg.privacy.strip_query, cfg.capture.hold_ms], ["debug", false, 300]);
      assertEquals(await written("/a?b=1"), "/a?b=1");
      assertMatch(
        lines.find((l) => /configuration reloaded/.test(l)) ?? "",
        /applied=privacy\.strip_query,log\.level /,
      );
      assert(lines.some((l) => / WARN configuration changes need a restart .*keys=capture\.hold_ms/.test(l)));
    });

    await t.step("an invalid file: rejected, nothing applied", async () => {
      await Deno.writeTextFile(path, stringify({ ...base, privacy: { strip_query: true, no_such_key: 1 } }));
      await assertRejects(() => reloadConfig(cfg, path, outputs));
      assertEquals(cfg.privacy.strip_query, false);
      assertEquals(await written("/c?d=2"), "/c?d=2");
    });
  } finally {
    setLogSink(prev);
    configureLog({ level: "info" });
    await outputs.close();
    await Deno.remove(dir, { recursive: true });
  }
});
