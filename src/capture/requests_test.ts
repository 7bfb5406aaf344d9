import { assert, assertEquals } from "../testing/asserts.ts";
import { type CapturedHello, type PayloadChunk, RequestTracker } from "./requests.ts";
import type { Row } from "../sink/row.ts";
import { H2_FRAME, H2_PREFACE, h2Frame } from "../parse/http2.ts";
import { hpackEncode } from "../../tests/helpers/hpack_encode.ts";
import { concatBytes, fromHex } from "../parse/bytes.ts";
import { ja4h } from "../fingerprint/ja4h.ts";

const enc = (s: string) => new TextEncoder().encode(s);

function chunk(fd: number, pos: number, text: string, port = 40000 + fd): PayloadChunk {
  return {
    src: "10.0.0.2",
    src_port: port,
    dst: "10.0.0.1",
    dst_port: 80,
    pid: 100,
    fd,
    tsNs: fd * 1000,
    server: "nginx",
    capture: "tracepoint",
    plaintext: false,
    pos,
    data: enc(text),
  };
}

/** A tracker whose sink collects what it delivers. */
function tracker(opts: ConstructorParameters<typeof RequestTracker>[1] = {}) {
  const rows: Row[] = [];
  const hellos: CapturedHello[] = [];
  const rt = new RequestTracker({ request: (r) => rows.push(r), hello: (h) => hellos.push(h) }, opts);
  return { rt, rows, hellos };
}

Deno.test("RequestTracker", async (t) => {
  await t.step("a head split over reads becomes one request row with its JA4H", () => {
    const { rt, rows } = tracker();
    const head = "GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\n\r\n";
    rt.push(chunk(5, 0, head.slice(0, 20)));
    assertEquals(rows.length, 0);
    rt.push(chunk(5, 20, head.slice(20)));
    assertEquals(rows.map((r) => [r.path, r.host_header, r.user_agent, r.src_port, r.pid]), [[
      "/a",
      "h",
      "ua",
      40005,
      100,
    ]]);
    assert(rows[0].ja4h.startsWith("ge11nn02"));
    assertEquals(rt.stats().bytes, 0);
  });
  await t.step("repeated header blocks: parsed at most twice, rows identical to a fresh parse", () => {
    const heads = [
      "GET /1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nCookie: b=2; a=1\r\nAccept-Language: de-DE\r\n\r\n",
      "POST /2 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nCookie: b=2; a=1\r\nAccept-Language: de-DE\r\n\r\n",
      "GET /3 HTTP/1.0\r\nHost: h\r\nUser-Agent: ua\r\nCookie: b=2; a=1\r\nAccept-Language: de-DE\r\n\r\n",
    ];
    const cached = tracker(), fresh: Row[] = [];
    let pos = 0;
    for (let i = 0; i < 9; i++) {
      const h = heads[i % 3];
      cached.rt.push(chunk(7, pos, h)); // one keep-alive connection
      pos += h.length;
      const f = tracker();
      f.rt.push(chunk(7, 0, h));
      fresh.push(f.rows[0]);
    }
    assertEquals(cached.rows, fresh);
    // Parsed twice: first as a block keyed without its Cookie value, then (its text again) under its text.
    assertEquals(cached.rt.stats().head_cache_hits, 7);
    assertEquals(new Set(cached.rows.map((r) => r.ja4h.slice(0, 4))), new Set(["ge11", "po11", "ge10"]));
  });
  await t.step(
    "heads differing in Cookie and Referer values share a block, each row has its own JA4H",
    async (t) => {
      const head = (m: string, cookie: string, ref: string) =>
        `${m} /p HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nCookie: ${cookie}\r\nReferer: ${ref}\r\n\r\n`;
      // Three users, two methods: a repeat (the block's last cookie), a new value, new names, a reordering.
      const heads = [
        head("GET", "sid=1; theme=dark", "https://h/a"),
        head("GET", "sid=1; theme=dark", "https://h/b"),
        head("POST", "sid=1; theme=dark", "https://h/b"),
        head("GET", "sid=2; theme=dark", "https://h/c"),
        head("GET", "theme=light; sid=3; x=1", "https://h/c"),
        head("GET", "sid=1; theme=dark", "https://h/d"),
      ];
      for (const full of [false, true]) {
        await t.step(full ? "raw forms shipped" : "default", () => {
          const cached = tracker({ fullJa4h: () => full }), fresh: Row[] = [];
          let pos = 0;
          heads.forEach((h, i) => {
            // The first three on one keep-alive connection, the rest one connection each.
            cached.rt.push(i < 3 ? chunk(7, pos, h) : chunk(8 + i, 0, h));
            pos += h.length;
            const f = tracker({ fullJa4h: () => full });
            f.rt.push(chunk(i < 3 ? 7 : 8 + i, 0, h));
            fresh.push(f.rows[0]);
          });
          assertEquals(cached.rows, fresh);
          // All but the first and the third (the second's text again: parsed into a block of its own).
          assertEquals(cached.rt.stats().head_cache_hits, 4);
          assertEquals(new Set(cached.rows.map((r) => r.ja4h)).size, 4);
        });
      }
    },
  );
  await t.step("HTTP/2: each request's JA4H, Host and User-Agent as a fresh computation gives them", () => {
    const base: [string, string][] = [
      ["user-agent", "Mozilla/5.0"],
      ["accept", "text/html"],
      ["accept-language", "en-US,en;q=0.9"],
      ["cookie", "a=1; b=2"],
    ];
    // Request 1 adds :authority and its four fields to the table (indices 62..66, newest first); later
    // requests refer to them by index (the same field objects) or send literals (equal values, new objects).
    const first = hpackEncode([[":method", "GET"], [":authority", "h.example"], ...base], {
      indexing: "incremental",
    });
    const indexed = Uint8Array.of(0x82, 0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62);
    const blocks: [string, Uint8Array, [string, string][]][] = [
      ["first", first, base],
      ["all indexed: the same fields", indexed, base],
      [
        "the same values as literals",
        hpackEncode([[":method", "GET"], [":authority", "h.example"], ...base]),
        base,
      ],
      [
        "another accept-language",
        hpackEncode([[":method", "GET"], [":authority", "h.example"], base[0], base[1], [
          "accept-language",
          "de-DE",
        ], base[3]]),
        [base[0], base[1], ["accept-language", "de-DE"], base[3]],
      ],
      ["indexed again", indexed, base],
      ["one field fewer", Uint8Array.of(0x82, 0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63), base.slice(0, 3)],
      ["POST, same fields", Uint8Array.of(0x83, 0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62), base],
    ];
    const { rt, rows } = tracker();
    let pos = 0;
    const push = (b: Uint8Array) => {
      rt.push({ ...chunk(9, pos, ""), plaintext: true, data: b });
      pos += b.length;
    };
    push(Uint8Array.from([...H2_PREFACE, ...h2Frame(H2_FRAME.SETTINGS, 0, 0, new Uint8Array(0))]));
    blocks.forEach(([, block], i) => push(h2Frame(H2_FRAME.HEADERS, 0x5, 1 + 2 * i, block)));
    assertEquals(rows.length, blocks.length);
    blocks.forEach(([name, , fields], i) => {
      const method = name.startsWith("POST") ? "POST" : "GET";
      const want = ja4h({ method, version: "20", headers: fields });
      assertEquals([rows[i].method, rows[i].ja4h, rows[i].ja4h_r], [method, want.ja4h, want.ja4h_r], name);
      assertEquals([rows[i].host_header, rows[i].user_agent], ["h.example", "Mozilla/5.0"], name);
    });
  });
  await t.step(
    "JA4H's raw forms only while they ship: a reload turning them on applies to cached blocks too",
    () => {
      let full = false;
      const { rt, rows } = tracker({ fullJa4h: () => full });
      const head = "GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nCookie: b=2; a=1\r\n\r\n";
      const h2 = Uint8Array.from([
        ...H2_PREFACE,
        ...h2Frame(H2_FRAME.SETTINGS, 0, 0, new Uint8Array(0)),
        ...h2Frame(
          H2_FRAME.HEADERS,
          0x5,
          1,
          hpackEncode([[":method", "GET"], ["user-agent", "ua"], ["cookie", "a=1"]]),
        ),
      ]);
      const want1 = ja4h({
        method: "GET",
        version: "11",
        headers: [["Host", "h"], ["User-Agent", "ua"], ["Cookie", "b=2; a=1"]],
      });
      const want2 = ja4h({
        method: "GET",
        version: "20",
        headers: [["user-agent", "ua"], ["cookie", "a=1"]],
      });
      const again = (id: number) =>
        h2Frame(
          H2_FRAME.HEADERS,
          0x5,
          id,
          hpackEncode([[":method", "GET"], ["user-agent", "ua"], ["cookie", "a=1"]]),
        );
      let h2pos = 0;
      for (const [i, on] of [[0, false], [1, false], [2, true], [3, true]] as const) {
        full = on;
        rt.push(chunk(20, i * head.length, head)); // one keep-alive connection, the same block each time
        const h = i === 0 ? h2 : again(1 + 2 * i);
        rt.push({ ...chunk(21, h2pos, ""), plaintext: true, data: h });
        h2pos += h.length;
      }
      const h1rows = rows.filter((r) => r.http_version === "11"),
        h2rows = rows.filter((r) => r.http_version === "20");
      assertEquals(h1rows.map((r) => r.ja4h), new Array(4).fill(want1.ja4h));
      assertEquals(h1rows.map((r) => [r.ja4h_r, r.ja4h_o, r.ja4h_ro]), [
        ["", "", ""],
        ["", "", ""],
        [want1.ja4h_r, want1.ja4h_o, want1.ja4h_ro],
        [want1.ja4h_r, want1.ja4h_o, want1.ja4h_ro],
      ]);
      assertEquals(h2rows.map((r) => [r.ja4h, r.ja4h_r]), [
        [want2.ja4h, ""],
        [want2.ja4h, ""],
        [want2.ja4h, want2.ja4h_r],
        [want2.ja4h, want2.ja4h_r],
      ]);
    },
  );
  await t.step("buffered bytes of all streams stay under the global budget, evictions counted", () => {
    // 200 connections each send 1 KiB of an unfinished head: 200 KiB wanted, 64 KiB allowed.
    const { rt, rows } = tracker({ maxBytes: 64 * 1024 });
    const partial = "GET /slow HTTP/1.1\r\n" + "X-Pad: " + "p".repeat(1000);
    for (let fd = 0; fd < 200; fd++) {
      rt.push(chunk(fd, 0, partial));
      assert(rt.stats().bytes <= 64 * 1024, `bytes ${rt.stats().bytes} after ${fd + 1} streams`);
    }
    const s = rt.stats();
    assert(s.evicted_bytes >= 200 - 64, `evicted_bytes ${s.evicted_bytes}`);
    assertEquals(s.streams + s.evicted_bytes, 200);
    // The most recent stream survived and still completes its request.
    rt.push(chunk(199, partial.length, "\r\n\r\n"));
    assertEquals(rows.map((r) => r.path), ["/slow"]);
  });
  await t.step("stream count cap evicts the least recently used", () => {
    const { rt } = tracker({ maxStreams: 10 });
    for (let fd = 0; fd < 25; fd++) rt.push(chunk(fd, 0, "GET /x HTTP/1.1\r\n"));
    assertEquals(rt.stats().streams, 10);
    assertEquals(rt.stats().evicted_lru, 15);
  });
  await t.step(
    "chunks handed as views of a reused buffer (the ring reader's): what is kept is copied",
    async () => {
      // The agent's reader hands out views into the ring, reused once the call returns. Split HTTP/1 heads and a
      // ClientHello in 120-byte segments, each pushed from one buffer overwritten after every push, must give
      // what fresh copies give.
      const hello = JSON.parse(
        await Deno.readTextFile(
          new URL("../fingerprint/testdata/local_small_mss_clienthello.json", import.meta.url),
        ),
      ).segments as string[];
      const http = enc(
        "GET /v1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\n\r\nGET /v2 HTTP/1.1\r\nHost: h\r\n\r\n",
      );
      const pieces = (b: Uint8Array, n: number) =>
        Array.from({ length: Math.ceil(b.length / n) }, (_, i) => b.subarray(i * n, i * n + n));
      const run = (reuse: boolean) => {
        const got = tracker();
        const scratch = new Uint8Array(4096);
        const feed = (fd: number, parts: Uint8Array[]) => {
          let pos = 0;
          for (const p of parts) {
            const c = chunk(fd, pos, "");
            if (reuse) {
              scratch.set(p);
              c.data = scratch.subarray(0, p.length);
            } else c.data = p.slice();
            got.rt.push(c);
            if (reuse) scratch.fill(0xaa); // the ring's space is reused after the call
            pos += p.length;
          }
        };
        feed(3, pieces(http, 7));
        feed(4, hello.map(fromHex));
        return got;
      };
      const fresh = run(false), reused = run(true);
      assertEquals(reused.rows.map((r) => r.path), ["/v1", "/v2"]);
      assertEquals(reused.rows, fresh.rows);
      assertEquals(reused.hellos.length, 1, "the ClientHello reassembled from reused buffers");
      assertEquals(reused.hellos.map((h) => h.fp.ja4), fresh.hellos.map((h) => h.fp.ja4));
    },
  );

  await t.step("the protocol is told by the first 4 bytes, however the reads split them", async (t) => {
    const h2 = new Uint8Array([
      ...H2_PREFACE,
      ...h2Frame(
        H2_FRAME.HEADERS,
        0x5,
        1,
        hpackEncode([[":method", "GET"], [":scheme", "http"], [":path", "/h2"], [":authority", "h"]], {
          huffman: false,
          indexing: "incremental",
        }),
      ),
    ]);
    const h1 = enc("GET /h1 HTTP/1.1\r\nHost: h\r\n\r\n");
    // "PRJ " is no preface: an HTTP/1 head that fails as one (counted), never HTTP/2.
    const notH2 = enc("PRJ * HTTP/2.0\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    const cases: [string, Uint8Array, number, [string, string][], number][] = [
      ["HTTP/2 prior knowledge", h2, 0, [["/h2", "20"]], 0],
      ["HTTP/2, preface split 2 + rest", h2, 2, [["/h2", "20"]], 0],
      ["HTTP/2, preface split 3 + rest", h2, 3, [["/h2", "20"]], 0],
      ["HTTP/1", h1, 0, [["/h1", "11"]], 0],
      ["HTTP/1 split 1 + rest", h1, 1, [["/h1", "11"]], 0],
      ["PRJ: HTTP/1 with a bad first line", notH2, 0, [["/after", "11"]], 1],
    ];
    for (const [name, bytes, cut, want, errors] of cases) {
      await t.step(name, () => {
        const { rt, rows } = tracker();
        const c = chunk(9, 0, "");
        const parts = cut ? [bytes.subarray(0, cut), bytes.subarray(cut)] : [bytes];
        let pos = 0;
        for (const p of parts) {
          rt.push({ ...c, pos, data: p });
          pos += p.length;
        }
        assertEquals(rows.map((r) => [r.path, r.http_version]), want);
        assertEquals(rt.stats().parse_errors, errors);
      });
    }
  });
  await t.step(
    "a raw stream's ClientHello tc already delivered is not parsed again; a second one is",
    async (t) => {
      const vectors: { client_hex: string }[] = JSON.parse(
        await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_tls.json", import.meta.url)),
      );
      const hello = fromHex(vectors[0].client_hex);
      // TLS 1.3 middlebox mode after a HelloRetryRequest: ChangeCipherSpec, then the second ClientHello.
      const retry = concatBytes([Uint8Array.of(20, 3, 3, 0, 1, 1), hello]);
      const raw = (fd: number, pos: number, data: Uint8Array): PayloadChunk => ({
        ...chunk(fd, pos, ""),
        data,
      });
      for (
        const [name, known, reads, parsed, skipped] of [
          ["not known: parsed", false, [hello], 1, 0],
          ["known: skipped", true, [hello], 0, 1],
          ["known, then a HelloRetryRequest's second hello: that one parsed", true, [hello, retry], 1, 1],
          ["the same in one read", true, [concatBytes([hello, retry])], 1, 1],
          ["the hello split over two reads", false, [hello.subarray(0, 100), hello.subarray(100)], 1, 0],
          ["split, known", true, [hello.subarray(0, 100), hello.subarray(100)], 0, 1],
        ] as const
      ) {
        await t.step(name, () => {
          const asked: unknown[] = [];
          const { rt, hellos } = tracker({ knownHello: (k) => (asked.push(k), known) });
          let pos = 0;
          for (const r of reads) {
            rt.push(raw(7, pos, r));
            pos += r.length;
          }
          assertEquals([hellos.length, rt.stats().hellos, rt.stats().hellos_known], [
            parsed,
            parsed,
            skipped,
          ]);
          assertEquals(asked.length, 1, "asked for the first hello only");
          assertEquals(typeof asked[0], "number", "by the connection's key");
          if (parsed) assert(hellos[0].fp.ja4.startsWith("t13d"));
        });
      }
    },
  );
  await t.step(
    "the sink's slot: kept with the stream, returned at its close, gone with a new connection",
    () => {
      const slots: unknown[] = [], gone: unknown[] = [];
      const rt = new RequestTracker({
        request: (_r, _fd, _ts, _tls, conn) => {
          slots.push(conn.facts);
          conn.facts ??= { n: slots.length };
        },
        hello: () => {},
      }, { gone: (f) => gone.push(f), maxStreams: 2 });
      const head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
      rt.push(chunk(3, 0, head));
      rt.push(chunk(3, head.length, head));
      assertEquals(slots, [undefined, { n: 1 }], "the second request of the connection finds it");
      // A first read (it carries the SYN) on the same fd and the same client port: the old connection's close
      // was lost, and its stream (with its slot) goes.
      rt.push({ ...chunk(3, 0, head), hasSyn: true });
      assertEquals(slots[2], undefined, "a new connection starts without it");
      assertEquals(gone, [{ n: 1 }], "the sink is told the old one went");
      assertEquals(rt.close(100, 3), { n: 3 }, "close returns it");
      assertEquals(rt.stats().streams, 0);
      rt.push(chunk(4, 0, head));
      assertEquals(rt.close(100, 4, false, true), undefined, "nothing read of the raw stream: not looked up");
      assertEquals(rt.stats().streams, 1, "kept: the kernel said it read nothing of it");
      assertEquals(rt.close(100, 4), { n: 4 });
      assertEquals(rt.stats().streams, 0);
      for (const fd of [5, 6, 7]) rt.push(chunk(fd, 0, head)); // one more than maxStreams
      assertEquals(gone, [{ n: 1 }, { n: 5 }], "evicted: told too; a close is not a going");
    },
  );
});
