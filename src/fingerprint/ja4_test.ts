import { assertEquals } from "../testing/asserts.ts";
import { type ClientHello, parseClientHello, readClientHello, TlsHandshakeReader } from "../parse/tls.ts";
import { ja4, ja4Fresh } from "./ja4.ts";
import fc from "fast-check";
import { ja4s } from "./ja4s.ts";
import { parseServerHello } from "../parse/tls.ts";
import { alpnCode } from "./common.ts";
import { fromHex } from "../parse/bytes.ts";

const h = (s: string) => s.split(",").map((x) => parseInt(x, 16));
const bytes = (...b: number[]) => new Uint8Array(b);
const ascii = (s: string) => new TextEncoder().encode(s);

// Spec §1.10: FoxIO's worked example (also the Rust unit test and tls3.pcapng stream 7).
const example: ClientHello = {
  legacyVersion: 0x0303,
  cipherSuites: h("1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035"),
  compressionMethods: [0],
  extensions: h("001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015"),
  alpn: [ascii("h2"), ascii("http/1.1")],
  supportedVersions: [0x0304, 0x0303],
  signatureAlgorithms: h("0403,0804,0401,0503,0805,0501,0806,0601"),
};

Deno.test("ja4: spec worked example and edge cases", async (t) => {
  await t.step("worked example, all four variants", () => {
    const r = ja4(example);
    assertEquals(r.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
    assertEquals(r.ja4_o, "t13d1516h2_acb858a92679_18f69afefd3d");
    assertEquals(
      r.ja4_r,
      "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_" +
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
    );
  });
  await t.step("GREASE is dropped from ciphers, extensions, versions and sigalgs", () => {
    const g: ClientHello = {
      ...example,
      cipherSuites: [0x0a0a, ...example.cipherSuites],
      extensions: [0x1a1a, ...example.extensions, 0xfafa],
      supportedVersions: [0x2a2a, 0x0304, 0x0303],
      signatureAlgorithms: [0x3a3a, ...example.signatureAlgorithms],
    };
    assertEquals(ja4(g).ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
  });
  await t.step("no SNI → i; SNI and ALPN removed from sorted c only", () => {
    const r = ja4({ ...example, extensions: example.extensions.filter((e) => e !== 0) });
    assertEquals(r.ja4.slice(0, 10), "t13i1515h2");
    assertEquals(r.ja4.slice(11), "8daaf6152771_e5627efa2ab1");
  });
  await t.step("legacy_version when supported_versions absent; GREASE-only list → 00", () => {
    assertEquals(ja4({ ...example, supportedVersions: undefined }).ja4.slice(1, 3), "12");
    assertEquals(
      ja4({ ...example, supportedVersions: undefined, legacyVersion: 0x0300 }).ja4.slice(1, 3),
      "s3",
    );
    assertEquals(ja4({ ...example, supportedVersions: [0x0a0a] }).ja4.slice(1, 3), "00");
    assertEquals(
      ja4({ ...example, supportedVersions: undefined, legacyVersion: 0x1234 }).ja4.slice(1, 3),
      "00",
    );
  });
  await t.step("counts capped at 99; hashed lists keep everything", () => {
    const many = Array.from({ length: 120 }, (_, i) => i + 1);
    const r = ja4({ ...example, cipherSuites: many });
    assertEquals(r.ja4.slice(4, 6), "99");
    assertEquals(r.ja4_r.split("_")[1].split(",").length, 120);
  });
  await t.step("no ciphers and no extensions → zero hashes; raw ends with empty sections", () => {
    const r = ja4({ ...example, cipherSuites: [], extensions: [], alpn: [], signatureAlgorithms: [] });
    assertEquals(r.ja4, "t13i000000_000000000000_000000000000");
    assertEquals(r.ja4_r, "t13i000000__");
  });
  await t.step("duplicate sigalgs kept; only sigalgs of extension 13 (no trailing _ without them)", () => {
    const r = ja4({ ...example, signatureAlgorithms: h("0805,0805") });
    assertEquals(r.ja4_r.endsWith("_0805,0805"), true);
    const r2 = ja4({ ...example, signatureAlgorithms: [] });
    assertEquals(r2.ja4_r.endsWith("4469,ff01"), true);
  });
  await t.step("transport q/d", () => {
    assertEquals(ja4(example, "q").ja4[0], "q");
    assertEquals(ja4(example, "d").ja4[0], "d");
  });
});

Deno.test("ALPN code", async (t) => {
  const ref: [Uint8Array | undefined, string][] = [
    [undefined, "00"],
    [bytes(), "00"],
    [ascii("h2"), "h2"],
    [ascii("http/1.1"), "h1"],
    [ascii("h3"), "h3"],
    [ascii("spdy/3.1"), "s1"],
    [bytes(0xba, 0xad), "99"], // vector tls-non-ascii-alpn: Rust and Python print 99
    [ascii("a"), "aa"],
  ];
  for (const [name, code] of ref) {
    await t.step(`reference ${name ? Array.from(name).join(" ") : "absent"} → ${code}`, () => {
      assertEquals(alpnCode(name), code);
    });
  }
  // The written rule's eight examples (spec §1.6).
  const hex: [number[], string][] = [
    [[0x61, 0x62], "ab"],
    [[0x20], "20"],
    [[0xab, 0xcd], "ad"],
    [[0x20, 0x61], "21"],
    [[0x30, 0xab], "3b"],
    [[0x61, 0x20], "60"],
    [[0x30, 0x31, 0xab, 0xcd], "3d"],
    [[0x30, 0xab, 0xcd, 0x31], "01"],
  ];
  for (const [b, code] of hex) {
    await t.step(`hex rule ${b.map((x) => x.toString(16)).join(" ")} → ${code}`, () => {
      assertEquals(alpnCode(new Uint8Array(b), "hex"), code);
    });
  }
});

interface TlsVector {
  pcap: string;
  stream: number;
  client_hex: string;
  server_hello_body_hex?: string;
  [k: string]: string | number | undefined;
}

const vectors: TlsVector[] = JSON.parse(
  await Deno.readTextFile(new URL("./testdata/foxio_tls.json", import.meta.url)),
);

Deno.test("ja4 / ja4s against FoxIO's Python output (bytes extracted from the FoxIO captures)", async (t) => {
  for (const v of vectors) {
    await t.step(`${v.pcap} stream ${v.stream}`, () => {
      const reader = new TlsHandshakeReader();
      reader.push(fromHex(v.client_hex));
      let n = 0;
      for (;;) {
        const m = reader.next();
        if (!m.ok) {
          assertEquals(m.needMore, true, m.error?.message);
          break;
        }
        if (m.value.type !== 1) continue;
        n++;
        const ch = parseClientHello(m.value.body);
        if (!ch.ok) throw ch.error;
        const r = ja4(ch.value);
        assertEquals(r.ja4, v[`JA4.${n}`]);
        assertEquals(r.ja4_r, v[`JA4_r.${n}`]);
        assertEquals(r.ja4_o, v[`JA4_o.${n}`]);
        assertEquals(r.ja4_ro, v[`JA4_ro.${n}`]);
      }
      assertEquals(n, Object.keys(v).filter((k) => k.startsWith("JA4.")).length);
      if (v.server_hello_body_hex) {
        const sh = parseServerHello(fromHex(v.server_hello_body_hex));
        if (!sh.ok) throw sh.error;
        const s = ja4s(sh.value);
        assertEquals(s.ja4s, v.JA4S);
        assertEquals(s.ja4s_r, v.JA4S_r);
      }
    });
  }
});

Deno.test("ClientHello split over real 120-byte-MSS segments gives the expected JA4", async () => {
  const v = JSON.parse(
    await Deno.readTextFile(new URL("./testdata/local_small_mss_clienthello.json", import.meta.url)),
  );
  const reader = new TlsHandshakeReader();
  let got: ReturnType<typeof reader.next> | undefined;
  for (const s of v.segments as string[]) {
    reader.push(fromHex(s));
    const m = reader.next();
    if (m.ok) got = m;
  }
  if (!got?.ok) throw new Error("no ClientHello reassembled");
  const ch = parseClientHello(got.value.body);
  if (!ch.ok) throw ch.error;
  const r = ja4(ch.value);
  assertEquals([r.ja4, r.ja4_r, r.ja4_o, r.ja4_ro], [v["JA4.1"], v["JA4_r.1"], v["JA4_o.1"], v["JA4_ro.1"]]);
  assertEquals(ch.value.serverName, v.domain ?? "split.example.test");
  // One-shot over the concatenation agrees.
  const all = readClientHello(fromHex((v.segments as string[]).join("")));
  if (!all.ok) throw new Error("readClientHello failed");
  assertEquals(ja4(all.value).ja4, v["JA4.1"]);
});

Deno.test("ja4: the memo never answers for a different hello", () => {
  // Small code pools make hellos that differ only in where one list ends and the next begins, in
  // supported_versions absent vs empty, or in ALPN; every answer must equal a fresh computation.
  const codes = fc.array(fc.constantFrom(0x0a0a, 0x1301, 0x0000, 0x0010, 0x002b, 0x0403), { maxLength: 4 });
  const hello = fc.record({
    legacyVersion: fc.constantFrom(0x0301, 0x0303),
    cipherSuites: codes,
    compressionMethods: fc.constant([0] as number[]),
    extensions: codes,
    alpn: fc.array(fc.uint8Array({ minLength: 0, maxLength: 2 }), { maxLength: 2 }),
    supportedVersions: fc.option(codes, { nil: undefined }),
    signatureAlgorithms: codes,
  });
  fc.assert(
    fc.property(hello, fc.constantFrom("t", "q") as fc.Arbitrary<"t" | "q">, (h, t) => {
      assertEquals(ja4(h, t), ja4Fresh(h, t));
      assertEquals(ja4(h, t, { alpnRule: "hex" }), ja4Fresh(h, t, { alpnRule: "hex" }));
    }),
    { numRuns: 3000 },
  );
});
