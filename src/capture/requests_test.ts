import { assert, assertEquals } from "../testing/asserts.ts";
import { type PayloadChunk, RequestTracker } from "./requests.ts";

const enc = (s: string) => new TextEncoder().encode(s);

function chunk(fd: number, pos: number, text: string, port = 40000 + fd): PayloadChunk {
  return {
    src: "10.0.0.2",
    src_port: port,
    dst: "10.0.0.1",
    dst_port: 80,
    pid: 100,
    fd,
    tsNs: BigInt(fd) * 1000n,
    server: "nginx",
    capture: "tracepoint",
    plaintext: false,
    pos,
    data: enc(text),
  };
}

Deno.test("RequestTracker", async (t) => {
  await t.step("a head split over reads becomes one request with its JA4H", () => {
    const rt = new RequestTracker();
    const head = "GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\n\r\n";
    assertEquals(rt.push(chunk(5, 0, head.slice(0, 20))).requests.length, 0);
    const out = rt.push(chunk(5, 20, head.slice(20))).requests;
    assertEquals(out.map((r) => [r.path, r.host_header, r.user_agent]), [["/a", "h", "ua"]]);
    assert(out[0].fp.ja4h.startsWith("ge11nn02"));
    assertEquals(rt.stats().bytes, 0);
  });
  await t.step("buffered bytes of all streams stay under the global budget, evictions counted", () => {
    // 200 connections each send 1 KiB of an unfinished head: 200 KiB wanted, 64 KiB allowed.
    const rt = new RequestTracker({ maxBytes: 64 * 1024 });
    const partial = "GET /slow HTTP/1.1\r\n" + "X-Pad: " + "p".repeat(1000);
    for (let fd = 0; fd < 200; fd++) {
      rt.push(chunk(fd, 0, partial));
      assert(rt.stats().bytes <= 64 * 1024, `bytes ${rt.stats().bytes} after ${fd + 1} streams`);
    }
    const s = rt.stats();
    assert(s.evicted_bytes >= 200 - 64, `evicted_bytes ${s.evicted_bytes}`);
    assertEquals(s.streams + s.evicted_bytes, 200);
    // The most recent stream survived and still completes its request.
    const done = rt.push(chunk(199, partial.length, "\r\n\r\n")).requests;
    assertEquals(done.map((r) => r.path), ["/slow"]);
  });
  await t.step("stream count cap evicts the least recently used", () => {
    const rt = new RequestTracker({ maxStreams: 10 });
    for (let fd = 0; fd < 25; fd++) rt.push(chunk(fd, 0, "GET /x HTTP/1.1\r\n"));
    assertEquals(rt.stats().streams, 10);
    assertEquals(rt.stats().evicted_lru, 15);
  });
});
