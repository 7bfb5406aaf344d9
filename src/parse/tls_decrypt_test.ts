import { assert, assertEquals } from "../testing/asserts.ts";
import fc from "fast-check";
import { bytesSource, CaptureReader, tsMicros } from "./pcap.ts";
import { decodePacket } from "./packet.ts";
import { TcpConnectionTable } from "../capture/tcp_reassembly.ts";
import { Http2RequestStream } from "./http2.ts";
import { Http1RequestStream } from "./http1.ts";
import { ja4h } from "../fingerprint/ja4h.ts";
import { hkdfExpandLabel, parseKeyLog, TlsDecryptor, TlsKeyLog } from "./tls_decrypt.ts";
import { fromHex, toHex } from "./bytes.ts";
import { decryptTlsSession, keyLogFromPcapng } from "../../tests/helpers/tls_session.ts";

const FIX = new URL("../../tests/fixtures/", import.meta.url);

/** Both directions of every TCP connection of a capture, via the project's pcap reader and reassembly. */
function tcpStreams(bytes: Uint8Array): { client: Uint8Array; server: Uint8Array }[] {
  const out: { client: Uint8Array[]; server: Uint8Array[]; clientIsA: () => boolean }[] = [];
  const table = new TcpConnectionTable();
  table.onOpen = (c) => {
    const s = {
      client: [] as Uint8Array[],
      server: [] as Uint8Array[],
      clientIsA: () => c.clientIsA !== false,
    };
    out.push(s);
    // Roles are known by the time data flows (SYN seen); route each direction accordingly.
    // Delivered bytes are only valid during the call: keep copies.
    c.fromA.onData = (b) => (s.clientIsA() ? s.client : s.server).push(b.slice());
    c.fromB.onData = (b) => (s.clientIsA() ? s.server : s.client).push(b.slice());
  };
  const r = new CaptureReader(bytesSource(bytes));
  for (let p = r.next(); p; p = r.next()) {
    const seg = decodePacket(p.linkType, p.data);
    if (seg.ok) table.handle(seg.value, tsMicros(p), p.frame);
  }
  table.finish();
  const cat = (parts: Uint8Array[]) => {
    const all = new Uint8Array(parts.reduce((n, x) => n + x.length, 0));
    let o = 0;
    for (const x of parts) (all.set(x, o), o += x.length);
    return all;
  };
  return out.map((s) => ({ client: cat(s.client), server: cat(s.server) }));
}

interface Expected {
  JA4H?: string;
}

/** JA4H of every request of a decrypted client stream, parsed by ALPN. */
function ja4hOf(alpn: string | undefined, client: Uint8Array): string[] {
  if (alpn === "h2") {
    const h2 = new Http2RequestStream();
    const reqs = h2.push(client);
    assert(!h2.dropped, `http2: ${h2.dropReason}`);
    return reqs.map((q) => ja4h({ method: q.method ?? "", version: "20", headers: q.headers }).ja4h);
  }
  const h1 = new Http1RequestStream();
  return h1.push(client).map((q) => ja4h(q).ja4h);
}

Deno.test("tls_decrypt: local nginx captures decrypt and give the reference JA4H", async (t) => {
  const keyLog = parseKeyLog(await Deno.readTextFile(new URL("local/keys.log", FIX)));
  assertEquals(keyLog.size, 4);
  const cases = [
    { name: "dev_curl_https_h2", alpn: "h2", suite: 0xc030 },
    { name: "dev_curl_https_h11", alpn: "http/1.1", suite: 0xc030 },
    { name: "dev_openssl_tls12", alpn: undefined, suite: 0xc02f },
    { name: "dev_python_small_mss", alpn: undefined, suite: 0xc030 },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const pcap = await Deno.readFile(new URL(`local/${c.name}.pcap`, FIX));
      const expected: Expected[] = JSON.parse(
        await Deno.readTextFile(new URL(`local/${c.name}.pcap.json`, FIX)),
      );
      const [conn] = tcpStreams(pcap);
      const r = decryptTlsSession(conn.client, conn.server, keyLog);
      assertEquals(r.stopped, { client: undefined, server: undefined });
      assertEquals([r.info.version, r.info.cipherSuite, r.info.alpn], [0x0303, c.suite, c.alpn]);
      assertEquals(r.stats.authFailures, 0);
      assert(new TextDecoder().decode(r.server).startsWith("HTTP/") || c.alpn === "h2", "server plaintext");
      const want = expected.filter((e) => e.JA4H).map((e) => e.JA4H!);
      assert(want.length > 0);
      assertEquals(ja4hOf(r.info.alpn, r.client), want);
    });
  }
});

Deno.test("tls_decrypt: TLS 1.3 captures with pcapng Decryption Secrets Blocks", async (t) => {
  for (const name of ["chrome-cloudflare-quic-with-secrets.pcapng", "http2-with-cookies.pcapng"]) {
    await t.step(name, async () => {
      const pcap = await Deno.readFile(new URL(`foxio/pcap/${name}`, FIX));
      const expected: Expected[] = JSON.parse(
        await Deno.readTextFile(new URL(`foxio/expected-python/${name}.json`, FIX)),
      );
      const keyLog = keyLogFromPcapng(pcap);
      assert(keyLog.size > 0, "no key log in the DSB");
      const conns = tcpStreams(pcap).filter((c) => c.client[0] === 0x16);
      assertEquals(conns.length, 1);
      const t0 = performance.now();
      const r = decryptTlsSession(conns[0].client, conns[0].server, keyLog);
      const ms = performance.now() - t0;
      assertEquals([r.info.version, r.info.cipherSuite, r.info.alpn], [0x0304, 0x1301, "h2"]);
      assertEquals(r.stopped, { client: undefined, server: undefined });
      assertEquals(r.stats.authFailures, 0);
      // Python prints the request JA4H once per request; compare as multisets of the set printed.
      const want = expected.filter((e) => e.JA4H).map((e) => e.JA4H!);
      const got = ja4hOf(r.info.alpn, r.client);
      assertEquals(got.length, want.length);
      assertEquals([...got].sort(), [...want].sort());
      console.log(`  ${name}: ${r.server.length + r.client.length} plaintext bytes in ${ms.toFixed(1)} ms`);
    });
  }
});

Deno.test("tls_decrypt: streaming in small pieces equals one shot", async () => {
  const keyLog = parseKeyLog(await Deno.readTextFile(new URL("local/keys.log", FIX)));
  const [conn] = tcpStreams(await Deno.readFile(new URL("local/dev_curl_https_h2.pcap", FIX)));
  const whole = decryptTlsSession(conn.client, conn.server, keyLog);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 200 }), fc.boolean(), (step, serverFirst) => {
      const d = new TlsDecryptor(keyLog);
      const order: ("client" | "server")[] = serverFirst ? ["server", "client"] : ["client", "server"];
      const max = Math.max(conn.client.length, conn.server.length);
      for (let i = 0; i < max; i += step) {
        for (const dir of order) d.push(dir, conn[dir].subarray(i, i + step));
      }
      assertEquals(toHex(d.take("client")), toHex(whole.client));
      assertEquals(toHex(d.take("server")), toHex(whole.server));
    }),
    { numRuns: 30 },
  );
});

Deno.test("tls_decrypt: key log parsing", () => {
  const cr = "aa".repeat(32);
  const log = parseKeyLog(
    [
      "# comment",
      "",
      `CLIENT_RANDOM ${cr} ${"01".repeat(48)}`,
      `CLIENT_TRAFFIC_SECRET_0 ${cr} ${"02".repeat(32)}`,
      "CLIENT_RANDOM short 00",
      `CLIENT_RANDOM ${cr} zz`,
      "garbage",
    ].join("\r\n"),
  );
  assertEquals(log.size, 2);
  assertEquals(log.badLines, 3);
  assertEquals(log.get("CLIENT_RANDOM", fromHex(cr))?.length, 48);
  assertEquals(log.get("CLIENT_TRAFFIC_SECRET_0", fromHex(cr)), fromHex("02".repeat(32)));
  assertEquals(log.get("CLIENT_RANDOM", fromHex("bb".repeat(32))), undefined);
});

Deno.test("tls_decrypt: HKDF-Expand-Label matches RFC 8448 (simple 1-RTT, server handshake keys)", () => {
  const secret = fromHex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38");
  assertEquals(
    toHex(hkdfExpandLabel("sha256", secret, "key", new Uint8Array(0), 16)),
    "3fce516009c21727d0f2e4e86ee403bc",
  );
  assertEquals(
    toHex(hkdfExpandLabel("sha256", secret, "iv", new Uint8Array(0), 12)),
    "5d313eb2671276ee13000b30",
  );
});

Deno.test("tls_decrypt: bad input and missing keys are counted, never thrown", async (t) => {
  const keyLog = parseKeyLog(await Deno.readTextFile(new URL("local/keys.log", FIX)));
  const [conn] = tcpStreams(await Deno.readFile(new URL("local/dev_curl_https_h11.pcap", FIX)));
  await t.step("no keys for the session", () => {
    const r = decryptTlsSession(conn.client, conn.server, new TlsKeyLog());
    assertEquals(r.stopped.client, "no-keys");
    assertEquals(r.client.length, 0);
    assert(r.errors.unsupported > 0);
  });
  await t.step("a flipped ciphertext byte fails authentication", () => {
    const client = conn.client.slice();
    client[client.length - 20] ^= 1;
    const r = decryptTlsSession(client, conn.server, keyLog);
    assertEquals(r.stopped.client, "auth-failed");
    assertEquals(r.stopped.server, undefined);
    assert(r.stats.authFailures > 0);
  });
  await t.step("not TLS", () => {
    const r = decryptTlsSession(
      new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"),
      new Uint8Array(0),
      keyLog,
    );
    assertEquals(r.stopped.client, "malformed");
  });
  await t.step("random and mutated streams never throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.nat(), fc.nat({ max: 255 }), (junk, at, b) => {
        decryptTlsSession(junk, junk, keyLog);
        const server = conn.server.slice();
        server[at % server.length] = b;
        const r = decryptTlsSession(conn.client, server, keyLog);
        assert(r.errors.malformed + r.errors.oversize + r.errors.unsupported >= 0);
      }),
      { numRuns: 200 },
    );
  });
});
