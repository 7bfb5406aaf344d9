import { assertEquals } from "../testing/asserts.ts";
import { allUpper, headEnd, looksLikeRequest, looksLikeTls } from "./sniff.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("sniff: headEnd finds the end of a CONNECT reply head with the HTTP/1 parser's search", () => {
  const head = "HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n";
  for (const tail of ["", "\x16\x03\x01\x00\x05hello", "GET / HTTP/1.1\r\n\r\n"]) {
    const b = enc(head + tail);
    assertEquals(headEnd(b), head.length);
    // Every shorter prefix is incomplete.
    for (let n = 0; n < head.length; n++) assertEquals(headEnd(b.subarray(0, n)), -1, `prefix ${n}`);
  }
  assertEquals(headEnd(enc("HTTP/1.0 200 OK\n\nrest")), 17); // bare LF line ends
  assertEquals(headEnd(enc("HTTP/1.1 200 OK\r\nA: b\r\n")), -1);
});

Deno.test("sniff: protocol guesses from the first bytes", () => {
  assertEquals(looksLikeTls(new Uint8Array([0x16])), undefined);
  assertEquals(looksLikeTls(new Uint8Array([0x16, 0x03])), true);
  assertEquals(looksLikeTls(new Uint8Array([0x16, 0x02])), false);
  assertEquals(looksLikeRequest(enc("GET / HTTP/1.1")), true);
  assertEquals(looksLikeRequest(enc("GE / HTTP/1.1")), false);
  assertEquals(looksLikeRequest(enc("get / HTTP/1.1")), false);
  assertEquals(allUpper(enc("GE")), true);
  assertEquals(allUpper(enc("G\xc3")), false);
  assertEquals(allUpper(new Uint8Array(0)), false);
});
