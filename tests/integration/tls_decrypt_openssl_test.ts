/**
 * Real OpenSSL sessions for the suites the committed captures don't cover (TLS 1.3 AES-256-GCM and
 * ChaCha20-Poly1305, TLS 1.2 ChaCha20-Poly1305 and AES-256-GCM): openssl s_server ← recording TCP relay ←
 * openssl s_client with -keylogfile, then decrypt the recorded bytes and find the request and the response.
 */
import { assert, assertEquals, assertStringIncludes } from "../../src/testing/asserts.ts";
import { parseKeyLog } from "../../src/parse/tls_decrypt.ts";
import { decryptTlsSession } from "../helpers/tls_session.ts";

async function have(cmd: string): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args: ["version"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

function cat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) (out.set(p, o), o += p.length);
  return out;
}

async function pump(from: Deno.Conn, to: Deno.Conn, log: Uint8Array[]): Promise<void> {
  const buf = new Uint8Array(16384);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      log.push(buf.slice(0, n));
      await to.write(buf.subarray(0, n));
    }
  } catch { /* the other side closed */ }
  try {
    await to.closeWrite();
  } catch { /* already closed */ }
}

/** One session through a recording relay; returns both directions and the key log text. */
async function session(
  dir: string,
  clientArgs: string[],
): Promise<{ c: Uint8Array; s: Uint8Array; keys: string }> {
  const server = new Deno.Command("openssl", {
    args: [
      "s_server",
      "-accept",
      "127.0.0.1:0",
      "-cert",
      `${dir}/c.pem`,
      "-key",
      `${dir}/k.pem`,
      "-www",
      "-naccept",
      "1",
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let banner = "";
  while (!/ACCEPT [\d.]+:(\d+)/.test(banner)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`openssl s_server did not start: ${banner}`);
    banner += value;
  }
  const port = Number(banner.match(/ACCEPT [\d.]+:(\d+)/)![1]);
  const relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const c: Uint8Array[] = [], s: Uint8Array[] = [];
  const relayed = (async () => {
    const down = await relay.accept();
    const up = await Deno.connect({ hostname: "127.0.0.1", port });
    await Promise.all([pump(down, up, c), pump(up, down, s)]);
    down.close();
    up.close();
  })();
  const client = new Deno.Command("openssl", {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${relay.addr.port}`,
      "-keylogfile",
      `${dir}/keys.log`,
      "-ign_eof",
      "-quiet",
      ...clientArgs,
    ],
    stdin: "piped",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const w = client.stdin.getWriter();
  await w.write(new TextEncoder().encode("GET /probe-path HTTP/1.0\r\n\r\n"));
  await w.close();
  await client.status;
  await relayed;
  relay.close();
  await reader.cancel();
  await server.status;
  return { c: cat(c), s: cat(s), keys: await Deno.readTextFile(`${dir}/keys.log`) };
}

Deno.test("tls_decrypt: openssl sessions with every supported AEAD", async (t) => {
  assert(await have("openssl"), "openssl is required for this test (apt-get install openssl)");
  const dir = await Deno.makeTempDir();
  try {
    const gen = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        `${dir}/k.pem`,
        "-out",
        `${dir}/c.pem`,
        "-subj",
        "/CN=localhost",
        "-days",
        "2",
      ],
      stdout: "null",
      stderr: "null",
    }).output();
    assert(gen.success, "openssl req failed");
    const cases = [
      {
        name: "TLS 1.3 AES-256-GCM",
        args: ["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        v: 0x0304,
        suite: 0x1302,
      },
      {
        name: "TLS 1.3 ChaCha20-Poly1305",
        args: ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        v: 0x0304,
        suite: 0x1303,
      },
      {
        name: "TLS 1.3 AES-128-GCM",
        args: ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
        v: 0x0304,
        suite: 0x1301,
      },
      {
        name: "TLS 1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
        args: ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
        v: 0x0303,
        suite: 0xcca9,
      },
      {
        name: "TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384",
        args: ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        v: 0x0303,
        suite: 0xc02c,
      },
    ];
    for (const c of cases) {
      await t.step(c.name, async () => {
        const { c: client, s: server, keys } = await session(dir, c.args);
        const r = decryptTlsSession(client, server, parseKeyLog(keys));
        assertEquals([r.info.version, r.info.cipherSuite], [c.v, c.suite]);
        assertEquals(r.stopped, { client: undefined, server: undefined });
        assertEquals(new TextDecoder().decode(r.client), "GET /probe-path HTTP/1.0\r\n\r\n");
        assertStringIncludes(new TextDecoder().decode(r.server), "HTTP/1.0 200 ok");
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
