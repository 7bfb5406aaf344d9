import { assert, assertEquals } from "../testing/asserts.ts";
import {
  looksLikeTls,
  parseClientHello,
  parseServerHello,
  readClientHello,
  readServerHello,
  TlsHandshakeReader,
} from "./tls.ts";
import { ja4 } from "../fingerprint/ja4.ts";
import { concatBytes, fromHex } from "./bytes.ts";

const vectors: { pcap: string; stream: number; client_hex: string; server_hello_body_hex?: string }[] = JSON
  .parse(
    await Deno.readTextFile(new URL("../fingerprint/testdata/foxio_tls.json", import.meta.url)),
  );
const chrome = fromHex(vectors[0].client_hex); // tls3.pcapng stream 7: one 517-byte record
const shBody = fromHex(vectors[0].server_hello_body_hex!);

function record(type: number, payload: Uint8Array): Uint8Array {
  const r = new Uint8Array(5 + payload.length);
  r.set([type, 3, 1, payload.length >> 8, payload.length & 0xff]);
  r.set(payload, 5);
  return r;
}
/** Re-frames one handshake message into records of at most `size` bytes. */
function reframe(hs: Uint8Array, size: number): Uint8Array {
  const recs: Uint8Array[] = [];
  for (let i = 0; i < hs.length; i += size) recs.push(record(22, hs.subarray(i, i + size)));
  return concatBytes(recs);
}

Deno.test("TLS parsing", async (t) => {
  const want = ja4((readClientHello(chrome) as { value: Parameters<typeof ja4>[0] }).value).ja4;
  await t.step("real ClientHello: SNI, ALPN, versions, sigalgs", () => {
    const r = readClientHello(chrome);
    assert(r.ok);
    assertEquals(r.value.serverName, "darksail.ai");
    assertEquals(new TextDecoder().decode(r.value.alpn[0]), "h2");
    assert(r.value.supportedVersions!.includes(0x0304));
    assertEquals(r.value.signatureAlgorithms.length, 8);
    assertEquals(want, "t13d1516h2_8daaf6152771_e5627efa2ab1");
  });
  await t.step("handshake split across records (1..n bytes each) and pushes", () => {
    const hs = chrome.subarray(5);
    for (const size of [1, 7, 100, 300]) {
      const reader = new TlsHandshakeReader();
      const bytes = reframe(hs, size);
      for (let i = 0; i < bytes.length; i += 13) reader.push(bytes.subarray(i, i + 13));
      const m = reader.next();
      assert(m.ok, `record size ${size}`);
      const ch = parseClientHello(m.value.body);
      assert(ch.ok);
      assertEquals(ja4(ch.value).ja4, want);
    }
  });
  await t.step("1.9 KB post-quantum-sized hello split over two segments", () => {
    // Grow the real hello with a 1400-byte extension (as an ML-KEM key share would) and fix the lengths.
    const body = chrome.subarray(9);
    const extLenOff = (() => {
      let p = 34;
      p += 1 + body[p];
      p += 2 + ((body[p] << 8) | body[p + 1]);
      p += 1 + body[p];
      return p;
    })();
    const extra = new Uint8Array(4 + 1400);
    extra.set([0xfe, 0x0d, 1400 >> 8, 1400 & 0xff]);
    const oldExt = (body[extLenOff] << 8) | body[extLenOff + 1];
    const nb = concatBytes([body, extra]);
    nb[extLenOff] = (oldExt + extra.length) >> 8;
    nb[extLenOff + 1] = (oldExt + extra.length) & 0xff;
    const hs = concatBytes([new Uint8Array([1, 0, nb.length >> 8, nb.length & 0xff]), nb]);
    const bytes = record(22, hs);
    assert(bytes.length > 1900);
    const reader = new TlsHandshakeReader();
    reader.push(bytes.subarray(0, 1448));
    assertEquals(reader.next().ok, false);
    reader.push(bytes.subarray(1448));
    const m = reader.next();
    assert(m.ok);
    const ch = parseClientHello(m.value.body);
    assert(ch.ok);
    assertEquals(ja4(ch.value).ja4.slice(0, 10), "t13d1517h2");
  });
  await t.step("ServerHello and HelloRetryRequest detection", () => {
    const sh = parseServerHello(shBody);
    assert(sh.ok);
    assertEquals(sh.value.helloRetryRequest, false);
    assertEquals(sh.value.supportedVersion, 0x0304);
    const hrr = shBody.slice();
    hrr.set(fromHex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"), 2);
    const r = parseServerHello(hrr);
    assert(r.ok && r.value.helloRetryRequest);
    const full = record(
      22,
      concatBytes([new Uint8Array([2, 0, shBody.length >> 8, shBody.length & 0xff]), shBody]),
    );
    const rs = readServerHello(full);
    assert(rs.ok && rs.value.cipherSuite === 0x1301);
  });
  await t.step("alerts are skipped; application data stops the reader", () => {
    const reader = new TlsHandshakeReader();
    reader.push(
      concatBytes([record(21, new Uint8Array([1, 0])), chrome, record(23, new Uint8Array(10)), chrome]),
    );
    assert(reader.next().ok);
    assertEquals(reader.next().ok, false);
    assert(reader.encrypted);
  });
  const bad: [string, Uint8Array, string][] = [
    ["garbage", new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), "malformed"],
    ["oversize handshake", record(22, new Uint8Array([1, 0x01, 0x00, 0x01, 3, 3])), "oversize"],
    ["oversize record", new Uint8Array([22, 3, 1, 0xff, 0xff]), "oversize"],
    ["empty handshake record", new Uint8Array([22, 3, 1, 0, 0]), "malformed"],
  ];
  for (const [name, bytes, code] of bad) {
    await t.step(`typed error: ${name}`, () => {
      const reader = new TlsHandshakeReader();
      reader.push(bytes);
      const m = reader.next();
      assert(!m.ok && !m.needMore);
      assertEquals(m.error.code, code);
      assertEquals(reader.errors[code as "malformed"], 1);
      assert(reader.failed);
      assertEquals(reader.next().ok, false);
    });
  }
  await t.step("every truncation of a real hello body is a typed error, never a throw", () => {
    const body = chrome.subarray(9);
    for (let n = 0; n < body.length; n++) {
      const r = parseClientHello(body.subarray(0, n));
      // Cutting exactly at the end of compression methods is a valid extension-less hello.
      if (r.ok) assertEquals(r.value.extensions.length, 0);
      else assert(["truncated", "malformed"].includes(r.error.code));
    }
  });
  await t.step("incomplete record prefix → NeedMore", () => {
    for (const n of [0, 3, 5, 100, chrome.length - 1]) {
      const r = readClientHello(chrome.subarray(0, n));
      assert(!r.ok && r.needMore === true, `prefix ${n}`);
    }
  });
  const classify: [string, number[], boolean][] = [
    ["ClientHello record", [22, 3, 1, 2, 0, 1], true],
    ["one byte", [22], true],
    ["HTTP", [0x47, 0x45, 0x54], false],
    ["record version 3.9", [22, 3, 9], false],
    ["ServerHello", [22, 3, 3, 0, 80, 2], false],
    ["empty", [], false],
  ];
  for (const [name, b, yes] of classify) {
    await t.step(`looksLikeTls ${name}`, () => assertEquals(looksLikeTls(new Uint8Array(b)), yes));
  }
});
