import { assert, assertEquals } from "../testing/asserts.ts";
import {
  bodyFraming,
  HeaderBlockCache,
  Http1RequestStream,
  parseRequestHead,
  type RequestHead,
} from "./http1.ts";
import { ja4h } from "../fingerprint/ja4h.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("parseRequestHead", async (t) => {
  await t.step("method, target, version, header order and case, head length", () => {
    const s = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nuser-AGENT:  curl \r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\nBODY";
    const r = parseRequestHead(enc(s));
    assert(r.ok);
    assertEquals(r.value.method, "GET");
    assertEquals(r.value.target, "/a?b=1");
    assertEquals(r.value.version, "11");
    assertEquals(r.value.versionText, "HTTP/1.1");
    assertEquals(r.value.headers, [["Host", "x"], ["user-AGENT", "curl"], ["X-Dup", "1"], ["X-Dup", "2"]]);
    assertEquals(r.value.headLength, s.length - 4);
  });
  await t.step("bare LF and empty value (http-empty-useragent.pcap case)", () => {
    const r = parseRequestHead(enc("GET / HTTP/1.0\nUser-Agent:\n\n"));
    assert(r.ok);
    assertEquals(r.value.version, "10");
    assertEquals(r.value.headers, [["User-Agent", ""]]);
  });
  for (
    const m of [
      "GET",
      "POST",
      "PUT",
      "HEAD",
      "OPTIONS",
      "DELETE",
      "PATCH",
      "CONNECT",
      "TRACE",
      "PROPFIND",
      "M-SEARCH",
    ]
  ) {
    await t.step(`method ${m}`, () => {
      const r = parseRequestHead(enc(`${m} * HTTP/1.1\r\n\r\n`));
      assert(r.ok && r.value.method === m);
    });
  }
  const bad: [string, string, string][] = [
    ["HTTP/0.9 style", "GET /\r\n\r\n", "malformed"],
    ["HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "unsupported"],
    ["no colon", "GET / HTTP/1.1\r\nfoo\r\n\r\n", "malformed"],
    ["bad method", "G(T / HTTP/1.1\r\n\r\n", "malformed"],
    ["binary", "\x16\x03\x01\x02\x00\x01\r\n\r\n", "malformed"],
  ];
  for (const [name, s, code] of bad) {
    await t.step(`error: ${name}`, () => {
      const r = parseRequestHead(enc(s));
      assert(!r.ok && !r.needMore);
      assertEquals(r.error.code, code);
    });
  }
  await t.step("incomplete → NeedMore; over the cap → oversize", () => {
    const r = parseRequestHead(enc("GET / HTTP/1.1\r\nHost: x\r\n"));
    assert(!r.ok && r.needMore);
    const big = "GET / HTTP/1.1\r\nX: " + "a".repeat(70000) + "\r\n\r\n";
    const o = parseRequestHead(enc(big));
    assert(!o.ok && !o.needMore && o.error.code === "oversize");
  });
  await t.step("obs-fold continues the previous value", () => {
    const r = parseRequestHead(enc("GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n"));
    assert(r.ok);
    assertEquals(r.value.headers, [["X", "a b"]]);
  });
});

Deno.test("Http1RequestStream", async (t) => {
  const req = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: h\r\n${extra}\r\n`;
  await t.step("pipelined requests in one buffer", () => {
    const s = new Http1RequestStream();
    const heads = s.push(enc(req("/1") + req("/2") + req("/3")));
    assertEquals(heads.map((h) => h.target), ["/1", "/2", "/3"]);
  });
  await t.step("a head split at every byte position", () => {
    const all = enc(req("/a") + req("/b"));
    for (let cut = 1; cut < all.length; cut++) {
      const s = new Http1RequestStream();
      const heads = [...s.push(all.subarray(0, cut)), ...s.push(all.subarray(cut))];
      assertEquals(heads.map((h) => h.target), ["/a", "/b"], `cut ${cut}`);
    }
  });
  await t.step("Content-Length body skipped, even when it looks like a request", () => {
    const body = req("/fake");
    const s = new Http1RequestStream();
    const bytes = enc(`POST /p HTTP/1.1\r\nContent-Length: ${body.length}\r\n\r\n${body}` + req("/next"));
    const heads: string[] = [];
    for (let i = 0; i < bytes.length; i += 5) {
      heads.push(...s.push(bytes.subarray(i, i + 5)).map((h) => h.target));
    }
    assertEquals(heads, ["/p", "/next"]);
    assertEquals(s.bodyBytes, body.length);
  });
  await t.step("chunked body with extensions and trailers skipped", () => {
    const s = new Http1RequestStream();
    const chunked = "POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" +
      "5;ext=1\r\nhello\r\n1A\r\n" + "GET /x HTTP/1.1\r\nHost: y\r\n" + "\r\n0\r\nTrailer: t\r\n\r\n";
    const heads = s.push(enc(chunked + req("/after")));
    assertEquals(heads.map((h) => h.target), ["/c", "/after"]);
    assertEquals(s.errors.malformed, 0);
  });
  await t.step("garbage is counted once and the stream resynchronises", () => {
    const s = new Http1RequestStream();
    const heads = s.push(enc("\x00\x01garbage line\r\nmore junk\r\n" + req("/ok")));
    assertEquals(heads.map((h) => h.target), ["/ok"]);
    assertEquals(s.errors.malformed, 1);
  });
  await t.step("oversize head counted, next request still found", () => {
    const s = new Http1RequestStream();
    const big = enc("GET /big HTTP/1.1\r\nX: " + "a".repeat(70000));
    const heads = [...s.push(big), ...s.push(enc("\r\n\r\n" + req("/small")))];
    assertEquals(heads.map((h) => h.target), ["/small"]);
    assertEquals(s.errors.oversize, 1);
    assert(s.buffered < 70000);
  });
  await t.step("conflicting Content-Length is malformed", () => {
    const r = parseRequestHead(enc("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
    assert(r.ok);
    assertEquals(bodyFraming(r.value), "malformed");
  });
  await t.step("leading empty lines before a request are ignored", () => {
    const s = new Http1RequestStream();
    assertEquals(s.push(enc("\r\n\r\n" + req("/e"))).map((h) => h.target), ["/e"]);
    assertEquals(s.errors.malformed, 0);
  });
  await t.step("takePartial after a gap: the lines seen so far, then resynchronise", () => {
    const s = new Http1RequestStream();
    assertEquals(s.push(enc("GET /cut HTTP/1.1\r\nHost: h\r\nUser-Ag")).length, 0);
    const p = s.takePartial();
    assert(p !== undefined);
    assertEquals(p.target, "/cut");
    assertEquals(p.headers, [["Host", "h"]]);
    assertEquals(s.push(enc("ent: x\r\n\r\n" + req("/next"))).map((h) => h.target), ["/next"]);
    assertEquals(s.takePartial(), undefined);
  });
  await t.step(
    "a header block repeated on a stream (compared with its previous one) parses as a fresh head",
    async (t) => {
      const A = "Host: h\r\nUser-Agent: ua/1\r\n\r\n";
      // lastHits: heads whose block was the stream's previous one (found without a lookup).
      const cases: [name: string, heads: string[], lastHits: number][] = [
        ["same block, other request lines", [
          "GET /a HTTP/1.1\r\n" + A,
          "HEAD /b?q HTTP/1.0\r\n" + A,
          "GET /c HTTP/1.1\r\n" + A,
        ], 2],
        ["a block that extends the previous one", [
          "GET /a HTTP/1.1\r\n" + A,
          "GET /b HTTP/1.1\r\n" + A.slice(0, -2) + "X: 1\r\n\r\n",
        ], 0],
        ["a block cut short of the previous one", [
          "GET /a HTTP/1.1\r\n" + A,
          "GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
          "GET /c HTTP/1.1\r\n" + A,
        ], 0],
        ["a body framed by the block, then the same block", [
          "POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET ",
          "POST /q HTTP/1.1\r\nContent-Length: 4\r\n\r\nABCD",
        ], 1],
        ["non-ASCII target", ["GET /a HTTP/1.1\r\n" + A, "GET /\u00e9t\u00e9 HTTP/1.1\r\n" + A], 1],
        ["bad request line before a known block", [
          "GET /a HTTP/1.1\r\n" + A,
          "GET  HTTP/1.1\r\n" + A,
          "GET /z HTTP/1.1\r\n" + A,
        ], 2], // the bad head's block is found too (then its request line fails)
        ["bare LF", ["GET / HTTP/1.0\nHost: h\n\n", "GET /2 HTTP/1.0\nHost: h\n\n"], 1],
        // A cookie is a user's and a referer a page's: the block is keyed without their values.
        ["Cookie and Referer values differ", [
          "GET /a HTTP/1.1\r\nHost: h\r\nCookie: s=1; a=b\r\nReferer: https://h/x\r\n\r\n",
          "GET /b HTTP/1.1\r\nHost: h\r\nCookie: s=2;a=b\r\nReferer: https://h/y\r\n\r\n",
          "GET /c HTTP/1.1\r\nHost: h\r\nCookie:  b=1 \r\nReferer:\r\n\r\n",
        ], 2],
        ["Referer before Cookie, first after the request line, bare LF", [
          "GET /a HTTP/1.1\nReferer: /1\nHost: h\nCookie: s=1\n\n",
          "GET /b HTTP/1.1\nReferer: /2\nHost: h\nCookie: s=2\n\n",
        ], 1],
        ["two Cookie lines stay in the key", [
          "GET /a HTTP/1.1\r\nCookie: s=1\r\nCookie: t=1\r\n\r\n",
          "GET /b HTTP/1.1\r\nCookie: s=2\r\nCookie: t=1\r\n\r\n",
        ], 0],
        ["a lower-case cookie stays in the key", [
          "GET /a HTTP/1.1\r\ncookie: s=1\r\nReferer: /1\r\n\r\n",
          "GET /b HTTP/1.1\r\ncookie: s=2\r\nReferer: /2\r\n\r\n",
          "GET /c HTTP/1.1\r\ncookie: s=2\r\nReferer: /3\r\n\r\n",
        ], 1],
        ["a Cookie continued on the next line stays in the key", [
          "GET /a HTTP/1.1\r\nCookie: s=1\r\n t=1\r\n\r\n",
          "GET /b HTTP/1.1\r\nCookie: s=1\r\n t=2\r\n\r\n",
        ], 0],
        ["empty block", [
          "GET / HTTP/1.1\r\n\r\n",
          "GET /2 HTTP/1.1\r\n\r\n",
          "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
        ], 1],
      ];
      // As JA4H sees a head: a cached block keeps no Referer value, and a head's Cookie value is `cookie`
      // when its block was keyed without it.
      const view = (s: Http1RequestStream, bytes: Uint8Array[]) =>
        bytes.flatMap((b) => s.push(b)).map((h) => [
          h.method,
          h.target,
          h.version,
          h.headers.map(([n, v]) => [n, n === "Referer" ? "" : n === "Cookie" ? h.cookie ?? v : v]),
          h.headLength,
          ja4h(h),
        ]);
      for (const [name, heads, lastHits] of cases) {
        await t.step(name, () => {
          for (const split of ["one push per head", "all in one push", "one byte per push"]) {
            const bytes = split === "one push per head"
              ? heads.map(enc)
              : split === "all in one push"
              ? [enc(heads.join(""))]
              : [...enc(heads.join(""))].map((x) => Uint8Array.of(x));
            const cache = new HeaderBlockCache();
            const cached = new Http1RequestStream({ cache });
            const fresh = new Http1RequestStream();
            assertEquals(view(cached, bytes), view(fresh, bytes), split);
            assertEquals(cached.errors, fresh.errors, split);
            assertEquals(cache.lastHits, lastHits, split);
          }
        });
      }
    },
  );
  await t.step(
    "a short head repeated byte for byte is found without decoding, parsed as a fresh head",
    () => {
      const cache = new HeaderBlockCache();
      const tool = "GET /health HTTP/1.1\r\nHost: h\r\nUser-Agent: probe/1\r\n\r\n";
      const post = "POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
      // Each entry: one connection's pushes (a fresh stream), as one connection per request sends them.
      const conns: string[][] = [
        [tool], // first sight
        [tool], // twice in a row: kept as bytes
        [tool], // found as bytes
        [tool + tool], // pipelined: both found, each its own length
        ["GET /health HTTP/1.1\r\nHost: h\r\nUser-Agent: probe/2\r\n\r\n"], // one byte differs
        [tool.slice(0, 20), tool.slice(20)], // split: the second push is no head start
        [post + "abcde"],
        [post + "abcde"], // kept as bytes
        [post + "abc", "deGET /y HTTP/1.1\r\n\r\n"], // found as bytes; its body still skipped
      ];
      const view = (h: RequestHead) => [h.method, h.target, h.version, h.headers, h.headLength, ja4h(h).ja4h];
      const got = conns.map((pushes) => {
        const s = new Http1RequestStream({ cache });
        return pushes.flatMap((b) => s.push(enc(b))).map(view);
      });
      const want = conns.map((pushes) => {
        const s = new Http1RequestStream();
        return pushes.flatMap((b) => s.push(enc(b))).map(view);
      });
      assertEquals(got, want);
      assertEquals(want.flat().map((v) => v[1]), [
        ...["/health", "/health", "/health", "/health", "/health", "/health", "/health"],
        ...["/f", "/f", "/f", "/y"],
      ]);
      // The third and both pipelined /health heads, and the third POST.
      assertEquals(cache.repeats, 4);
    },
  );
  await t.step("hostile 1-byte segments: work stays linear in the bytes sent", async (t) => {
    // A 32 KB head (many headers), then a small request, each sent one byte per push; also the chunked
    // trailers path. Before, every push copied all buffered bytes and rescanned from byte 0 (quadratic).
    const big = "GET /big HTTP/1.1\r\n" + "X-Pad: ".concat("a".repeat(90), "\r\n").repeat(330) + "\r\n";
    const trailers = "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" +
      "X-T: ".concat("b".repeat(90), "\r\n").repeat(100) + "\r\n";
    for (
      const [name, text, cached] of [
        ["head", big + req("/after"), false],
        ["head, header-block cache on", big + req("/after"), true],
        ["trailers", trailers + req("/after"), false],
      ] as const
    ) {
      await t.step(name, () => {
        const bytes = enc(text);
        const s = new Http1RequestStream(cached ? { cache: new HeaderBlockCache() } : {});
        const got: string[] = [];
        for (let i = 0; i < bytes.length; i++) {
          got.push(...s.push(bytes.subarray(i, i + 1)).map((h) => h.target));
        }
        assertEquals(got, name.startsWith("head") ? ["/big", "/after"] : ["/t", "/after"]);
        assert(s.scanned <= 4 * bytes.length, `scanned ${s.scanned} bytes for ${bytes.length} sent`);
        assert(s.copied <= 4 * bytes.length, `copied ${s.copied} bytes for ${bytes.length} sent`);
        assertEquals(s.buffered, 0);
      });
    }
  });
});
