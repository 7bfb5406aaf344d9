import { assertEquals } from "../testing/asserts.ts";
import { Http1RequestStream } from "../parse/http1.ts";
import {
  acceptLanguageCode,
  type Cookie,
  cookieMemoSize,
  cookiePieces,
  type HttpRequestHead,
  ja4h,
  JA4H_AB,
  ja4hWithCookie,
  methodCode,
} from "./ja4h.ts";
import { fromHex } from "../parse/bytes.ts";
import fc from "fast-check";

// Spec §3.8: http1-with-cookies.pcapng (FoxIO's numbers).
const curl: HttpRequestHead = {
  method: "GET",
  version: "11",
  headers: [
    ["Host", "localhost:8000"],
    ["User-Agent", "curl/8.1.2"],
    ["Accept", "*/*"],
    ["Referer", "http://localhost/"],
    ["Cookie", "yummy_cookie=choco; tasty_cookie=strawberry"],
    ["Accept-Language", "da, en-GB;q=0.8, en;q=0.7"],
  ],
};

Deno.test("ja4h: spec examples and edge cases", async (t) => {
  await t.step("http1-with-cookies worked example, all variants", () => {
    const r = ja4h(curl);
    assertEquals(r.ja4h, "ge11cr04da00_8ddaef5d77af_280f366eaa04_c2fb0fe53442");
    assertEquals(
      r.ja4h_ro,
      "ge11cr04da00_Host,User-Agent,Accept,Accept-Language_yummy_cookie,tasty_cookie_yummy_cookie=choco,tasty_cookie=strawberry",
    );
    // The spec gives the two original-order hashes without saying which is c and which is d.
    const o = r.ja4h_o.split("_").slice(2).sort();
    assertEquals(o, ["a0565a60202f", "f9cc76dcacf7"]);
    assertEquals(
      r.ja4h_r,
      "ge11cr04da00_Host,User-Agent,Accept,Accept-Language_tasty_cookie,yummy_cookie_tasty_cookie=strawberry,yummy_cookie=choco",
    );
  });
  await t.step("curl without cookies (mapping CSV value)", () => {
    const r = ja4h({
      method: "GET",
      version: "HTTP/1.1",
      headers: [["Host", "x"], ["User-Agent", "curl"], ["Accept", "*/*"]],
    });
    assertEquals(r.ja4h, "ge11nn030000_fe444ad14866_000000000000_000000000000");
    assertEquals(r.ja4h_r, "ge11nn030000_Host,User-Agent,Accept__");
  });
  await t.step("no header lines: b is SHA-256 of nothing (Python/Wireshark)", () => {
    assertEquals(
      ja4h({ method: "GET", version: "10", headers: [] }).ja4h,
      "ge10nn000000_e3b0c44298fc_000000000000_000000000000",
    );
  });
  await t.step("HTTP/2 list: pseudo-headers excluded, one cookie field per crumb", () => {
    const r = ja4h({
      method: "GET",
      version: "20",
      headers: [
        [":method", "GET"],
        [":authority", "x"],
        [":scheme", "https"],
        [":path", "/"],
        ["user-agent", "u"],
        [
          "cookie",
          "b=2",
        ],
        ["cookie", "a=1"],
        ["referer", "r"],
      ],
    });
    assertEquals(r.ja4h_r, "ge20cr010000_user-agent_a,b_a=1,b=2");
  });
  await t.step("repeated headers each count; Referrer is ordinary; case-insensitive Cookie/Referer", () => {
    const r = ja4h({
      method: "POST",
      version: "11",
      headers: [["X", "1"], ["X", "2"], ["Referrer", "z"], ["COOKIE", "a=1"], ["referer", "q"]],
    });
    assertEquals(r.ja4h_r.slice(0, 12), "po11cr030000");
  });
  await t.step("sort by name not by pair (single-packets.pcap case); equal names keep order", () => {
    const r = ja4h({
      method: "GET",
      version: "11",
      headers: [["Cookie", "visitor_id413862-hash=h; visitor_id413862=v; pardot=p; z=2; z=1; A=0; _u=1"]],
    });
    assertEquals(
      r.ja4h_r.slice(r.ja4h_r.indexOf("_", 13)),
      "_A,_u,pardot,visitor_id413862,visitor_id413862-hash,z,z_A=0,_u=1,pardot=p,visitor_id413862=v,visitor_id413862-hash=h,z=2,z=1",
    );
  });
  await t.step("cookie split on ; with trimming, empty pieces skipped, piece without =", () => {
    const r = ja4h({ method: "GET", version: "11", headers: [["Cookie", " a=1;;b ;  c=x=y,z ;"]] });
    assertEquals(r.ja4h_r, "ge11cn000000__a,b,c_a=1,b,c=x=y,z");
  });
  await t.step("header count capped at 99, list not truncated", () => {
    const headers: [string, string][] = Array.from({ length: 120 }, (_, i) => [`H${i}`, "v"]);
    const r = ja4h({ method: "GET", version: "11", headers });
    assertEquals(r.ja4h.slice(6, 8), "99");
    assertEquals(r.ja4h_r.split("_")[1].split(",").length, 120);
  });
  const langs: [string | undefined, string][] = [
    ["en-US,en;q=0.9", "enus"],
    ["da, en-GB;q=0.8, en;q=0.7", "da00"],
    ["ru-RU,ru;q=0.9,en-US;q=0.8", "ruru"],
    ["zh-Hans-CN", "zhha"],
    ["fr", "fr00"],
    ["en;q=0.5", "en00"],
    [undefined, "0000"],
  ];
  for (const [v, code] of langs) {
    await t.step(`Accept-Language ${v} → ${code}`, () => assertEquals(acceptLanguageCode(v), code));
  }
  const methods: [string, string][] = [["GET", "ge"], ["OPTIONS", "op"], ["PROPFIND", "pr"], [
    "M-SEARCH",
    "m-",
  ], [
    "X",
    "x0",
  ]];
  for (const [m, code] of methods) {
    await t.step(`method ${m} → ${code}`, () => assertEquals(methodCode(m), code));
  }
});

interface HttpVector {
  pcap: string;
  stream: number;
  client_hex: string;
  expected: { JA4H: string; JA4H_ro?: string }[];
}

Deno.test("ja4h against FoxIO's Python output (client bytes extracted from the FoxIO captures)", async (t) => {
  const vectors: HttpVector[] = JSON.parse(
    await Deno.readTextFile(new URL("./testdata/foxio_http.json", import.meta.url)),
  );
  for (const v of vectors) {
    await t.step(`${v.pcap} stream ${v.stream}`, () => {
      const s = new Http1RequestStream();
      const heads = s.push(fromHex(v.client_hex));
      const got = heads.map((x) => ja4h(x).ja4h);
      // The form shipped under the default privacy settings, computed alone: the same value, nothing else.
      assertEquals(
        heads.map((x) => ja4h(x, false)),
        got.map((j) => ({ ja4h: j, ja4h_r: "", ja4h_o: "", ja4h_ro: "" })),
      );
      // Python lists some requests once per direction; every expected value must be among ours.
      for (const e of v.expected) {
        assertEquals(got.includes(e.JA4H), true, `${e.JA4H} not in ${got.join(" ")}`);
        if (e.JA4H_ro && e.JA4H_ro[4] === "c") {
          // Python ends a cookie-less JA4H_ro with one "_" (spec §3.7): compare the cookie-bearing ones.
          assertEquals(heads.map((x) => ja4h(x).ja4h_ro).includes(e.JA4H_ro), true);
        }
      }
      assertEquals(s.errors.malformed + s.errors.oversize, 0);
    });
  }
});

Deno.test("keep-alive connection with two requests (local capture)", async () => {
  const v = JSON.parse(
    await Deno.readTextFile(new URL("./testdata/local_keepalive_http.json", import.meta.url)),
  );
  const s = new Http1RequestStream();
  const heads = (v.segments as string[]).flatMap((seg) => s.push(fromHex(seg)));
  assertEquals(heads.length, 2);
  for (const hd of heads) {
    assertEquals(ja4h(hd).ja4h, v.expected[0].JA4H);
    assertEquals(ja4h(hd).ja4h_ro, v.expected[0].JA4H_ro);
  }
});

Deno.test("cookiePieces: the pieces split(';') and trim() give, empty ones left out", () => {
  const alphabet = ["a", "B", "=", ";", " ", "\t", "\u00a0", "\ufeff", "\u2003", "é", "x=1", ";;", " ; "];
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...alphabet), { maxLength: 16 }), (parts) => {
      const v = parts.join("");
      const got: Cookie[] = [];
      cookiePieces(v, got);
      const want = v.split(";").map((p) => p.trim()).filter((p) => p.length > 0).map((pair) => {
        const eq = pair.indexOf("=");
        return { name: eq >= 0 ? pair.slice(0, eq) : pair, pair };
      });
      assertEquals(got, want, JSON.stringify(v));
    }),
    { numRuns: 2000 },
  );
});

Deno.test("ja4hWithCookie: a block's a and b parts with a head's own cookie, as ja4h gives the whole head", async (t) => {
  const head = (cookie: string): HttpRequestHead => ({
    method: "GET",
    version: "11",
    headers: [["Host", "h"], ["User-Agent", "ua"], ["Cookie", cookie], ["Accept-Language", "de-DE"]],
  });
  const ab = ja4h(head("")).ja4h.slice(0, JA4H_AB + 1);
  const cases: [string, string][] = [
    ["one pair", "sid=1"],
    ["sorted by name", "theme=dark; sid=2; a=1"],
    ["empty pieces and spaces", " ;a=1;; b=2 ; "],
    ["a piece without =", "flag; x=y=z"],
    [
      "long (several SHA-256 blocks)",
      Array.from({ length: 40 }, (_, i) => `c${i}=${"v".repeat(i)}`).join("; "),
    ],
  ];
  for (const [name, cookie] of cases) {
    await t.step(name, () => {
      const want = ja4h(head(cookie)).ja4h;
      assertEquals(ja4hWithCookie(ab, cookie), want);
      assertEquals(ja4hWithCookie(ab, cookie), want, "again (from the memo)");
    });
  }
  await t.step("past the memo's size: every value still its own", () => {
    for (let i = 0; i < 1200; i++) {
      const cookie = `sid=${i}; theme=${i % 3}`;
      assertEquals(ja4hWithCookie(ab, cookie), ja4h(head(cookie)).ja4h, cookie);
    }
    assertEquals(ja4hWithCookie(ab, "sid=7; theme=1"), ja4h(head("sid=7; theme=1")).ja4h);
  });
  await t.step("any value, as ja4h gives it (pieces, names sorted, non-ASCII, more than 64 pieces)", () => {
    const piece = fc.constantFrom(
      "a",
      "b",
      "ab",
      "a=1",
      "a=2",
      "b=",
      "=x",
      "B=1",
      "_=1",
      "é=ü",
      "k=€",
      " ",
      "\t",
      "=",
      "x=y=z",
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 80 }), fc.constantFrom(";", "; ", " ;"), (parts, sep) => {
        const cookie = parts.join(sep);
        assertEquals(ja4hWithCookie(ab, cookie), ja4h(head(cookie)).ja4h, JSON.stringify(cookie));
      }),
      { numRuns: 400 },
    );
    const many = Array.from({ length: 70 }, (_, i) => `n${70 - i}=${i}`).join("; ");
    assertEquals(ja4hWithCookie(ab, many), ja4h(head(many)).ja4h, "70 pieces");
  });
  await t.step("a value enters the memo when it comes a second time, not the first", () => {
    for (let i = 0; i < 3; i++) {
      const cookie = `visitor=${i}-${"f".repeat(40)}`;
      const before = cookieMemoSize();
      assertEquals(ja4hWithCookie(ab, cookie), ja4h(head(cookie)).ja4h, "first");
      assertEquals(cookieMemoSize(), before, "seen once: not kept");
      assertEquals(ja4hWithCookie(ab, cookie), ja4h(head(cookie)).ja4h, "second");
      assertEquals(cookieMemoSize(), before + 1, "seen twice: kept");
      assertEquals(ja4hWithCookie(ab, cookie), ja4h(head(cookie)).ja4h, "third, from the memo");
      assertEquals(cookieMemoSize(), before + 1);
    }
  });
});
