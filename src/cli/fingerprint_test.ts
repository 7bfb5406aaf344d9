import { assert, assertEquals, assertStringIncludes } from "../testing/asserts.ts";
import fc from "fast-check";
import { recordJson } from "./fingerprint.ts";

const MAIN = new URL("../main.ts", import.meta.url);
const FIX = new URL("../../tests/fixtures/foxio/pcap/", import.meta.url);

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN.href, "fingerprint", ...args],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
  }).output();
  const td = new TextDecoder();
  return { code: r.code, out: td.decode(r.stdout), err: td.decode(r.stderr) };
}

Deno.test("fingerprint --pcap: JSON lines with the Rust tool's field names", async () => {
  const r = await cli("--pcap", new URL("tls3.pcapng", FIX).pathname);
  assertEquals(r.code, 0, r.err);
  const recs = r.out.trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(recs.map((x) => x.stream), [7, 8, 9, 10, 11, 12, 13, 14]);
  assertEquals(recs[0], {
    stream: 7,
    transport: "tcp",
    src: "192.168.1.169",
    dst: "54.190.49.36",
    src_port: 63248,
    dst_port: 443,
    tls_server_name: "darksail.ai",
    ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
    ja4s: "t130200_1301_a56c5b993250",
    ja4t: "64240_2-1-3-1-1-4_1460_8",
    ja4ts: "64240_2-1-1-4-1-3_1460_7",
    ja4l_c: "16_128",
    ja4l_s: "34615_35",
  });
  assertEquals(recs[1].http, [{
    ja4h: "ge11nn07enus_3e3b55d61660_000000000000_000000000000",
    method: "GET",
    path: "/roots/dstrootcax3.p7c",
  }]);
  assertStringIncludes(r.err, "skipped=803");
});

Deno.test("fingerprint --with-raw adds the raw and original-order forms", async () => {
  const r = await cli("--pcap", new URL("http1-with-cookies.pcapng", FIX).pathname, "--with-raw");
  assertEquals(r.code, 0, r.err);
  const [rec] = r.out.trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(
    rec.http[0].ja4h_ro,
    "ge11cr04da00_Host,User-Agent,Accept,Accept-Language_yummy_cookie,tasty_cookie_yummy_cookie=choco,tasty_cookie=strawberry",
  );
  assertEquals(rec.http[0].ja4h, "ge11cr04da00_8ddaef5d77af_280f366eaa04_c2fb0fe53442");
});

Deno.test("fingerprint --ja4t-absent rust prints the Rust tool's JA4T", async () => {
  const path = new URL("gre-erspan-vxlan.pcap", FIX).pathname;
  const foxio = JSON.parse((await cli("--pcap", path)).out.trim().split("\n")[0]);
  const rust = JSON.parse((await cli("--pcap", path, "--ja4t-absent", "rust")).out.trim().split("\n")[0]);
  assertEquals([foxio.ja4t, rust.ja4t], ["8192_00_00_00", "8192__0_0"]);
});

Deno.test("fingerprint: usage and input errors exit 2 with a clear message", async (t) => {
  const notCapture = await Deno.makeTempFile({ suffix: ".pcap" });
  const truncated = await Deno.makeTempFile({ suffix: ".pcap" });
  try {
    await Deno.writeTextFile(notCapture, "this is text, not a capture\n");
    const whole = await Deno.readFile(new URL("tls12.pcap", FIX));
    await Deno.writeFile(truncated, whole.subarray(0, whole.length - 10));
    await t.step("missing --pcap", async () => {
      const r = await cli();
      assertEquals(r.code, 2);
      assertStringIncludes(r.err, "--pcap FILE is required");
    });
    await t.step("not a capture", async () => {
      const r = await cli("--pcap", notCapture);
      assertEquals(r.code, 2);
      assertStringIncludes(r.err, "not a pcap or pcapng file");
    });
    await t.step("no such file", async () => {
      const r = await cli("--pcap", notCapture + ".missing");
      assertEquals(r.code, 2);
      assertStringIncludes(r.err, "cannot open");
    });
    await t.step("bad --ja4t-absent", async () => {
      const r = await cli("--pcap", notCapture, "--ja4t-absent", "zero");
      assertEquals(r.code, 2);
    });
    await t.step("truncated last record: clean stop, warning, exit 0", async () => {
      const r = await cli("--pcap", truncated);
      assertEquals(r.code, 0, r.err);
      assertEquals(r.out, "");
      assertStringIncludes(r.err, "truncated last record");
    });
    await t.step("--help", async () => {
      const r = await cli("--help");
      assertEquals(r.code, 0);
      assert(r.out.includes("--with-raw"));
    });
  } finally {
    await Deno.remove(notCapture);
    await Deno.remove(truncated);
  }
});

Deno.test("fingerprint --keylog: TLS streams decrypted, their requests listed under http", async (t) => {
  const LOCAL = new URL("../../tests/fixtures/local/", import.meta.url);
  const keys = new URL("keys.log", LOCAL).pathname;
  const wrong = await Deno.makeTempFile({ suffix: ".log" });
  const empty = await Deno.makeTempFile({ suffix: ".log" });
  try {
    // Same sessions, other secrets: every record fails authentication.
    await Deno.writeTextFile(
      wrong,
      (await Deno.readTextFile(keys)).replace(/[0-9a-f]$/gm, (d) => d === "0" ? "1" : "0"),
    );
    await Deno.writeTextFile(empty, "# nothing\n");
    await t.step("HTTP/2 inside TLS 1.2 with --keylog", async () => {
      const r = await cli("--pcap", new URL("dev_curl_https_h2.pcap", LOCAL).pathname, "--keylog", keys);
      assertEquals(r.code, 0, r.err);
      const [rec] = r.out.trim().split("\n").map((l) => JSON.parse(l));
      assertEquals(rec.http, [{
        ja4h: "ge20nr03ptbr_dc308f3700d9_000000000000_000000000000",
        method: "GET",
        path: "/dev2", // tshark with the same key log: http2.headers.path
      }]);
      assertStringIncludes(r.err, "decrypted=1 undecryptable=0");
    });
    await t.step("TLS 1.3 with the key log embedded in the pcapng, no --keylog", async () => {
      const r = await cli("--pcap", new URL("http2-with-cookies.pcapng", FIX).pathname);
      assertEquals(r.code, 0, r.err);
      const [rec] = r.out.trim().split("\n").map((l) => JSON.parse(l));
      assertEquals(rec.http.length, 15);
      assertEquals(rec.http[0].ja4h, "ge20cn19enus_cb83bf27b7a9_c7713052b7e4_348cad68b6fb");
    });
    await t.step("wrong secrets: JA4 kept, no http, counted", async () => {
      const r = await cli("--pcap", new URL("dev_curl_https_h11.pcap", LOCAL).pathname, "--keylog", wrong);
      assertEquals(r.code, 0, r.err);
      const [rec] = r.out.trim().split("\n").map((l) => JSON.parse(l));
      assert(rec.ja4 !== undefined && rec.http === undefined, JSON.stringify(rec));
      assertStringIncludes(r.err, "undecryptable=1");
      assertStringIncludes(r.err, `"auth-failed":1`);
    });
    await t.step("a key log with no key lines, or none at all: exit 2", async () => {
      const pcap = new URL("dev_curl_https_h11.pcap", LOCAL).pathname;
      const a = await cli("--pcap", pcap, "--keylog", empty);
      assertEquals(a.code, 2);
      assertStringIncludes(a.err, "no key-log lines");
      const b = await cli("--pcap", pcap, "--keylog", empty + ".missing");
      assertEquals(b.code, 2);
      assertStringIncludes(b.err, "cannot open");
    });
  } finally {
    await Deno.remove(wrong);
    await Deno.remove(empty);
  }
});

Deno.test("fingerprint: recordJson writes exactly what JSON.stringify writes", () => {
  // Any UTF-16 unit, lone surrogates and controls included (SNI and paths come from the capture).
  const text = fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) });
  const anyText = fc.oneof(text, fc.string());
  const http = fc.record({
    ja4h: anyText,
    ja4h_r: fc.option(anyText, { nil: undefined }),
    method: anyText,
    path: anyText,
  });
  const rec = fc.record({
    stream: fc.nat(),
    transport: fc.constant("tcp" as const),
    src: anyText,
    dst: anyText,
    src_port: fc.nat({ max: 65535 }),
    dst_port: fc.nat({ max: 65535 }),
    tls_server_name: fc.option(anyText, { nil: undefined }),
    ja4: fc.option(anyText, { nil: undefined }),
    ja4l_c: fc.option(anyText, { nil: undefined }),
    http: fc.option(fc.array(http, { maxLength: 3 }), { nil: undefined }),
  }, { requiredKeys: ["stream", "transport", "src", "dst", "src_port", "dst_port"] });
  fc.assert(fc.property(rec, (r) => assertEquals(recordJson(r), JSON.stringify(r))), { numRuns: 2000 });
});
