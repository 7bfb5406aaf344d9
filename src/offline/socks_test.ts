import { assertEquals } from "../testing/asserts.ts";
import {
  consumeSocksClient,
  consumeSocksServer,
  SOCKS_NEED_MORE,
  SOCKS_NOT_SOCKS,
  type SocksState,
} from "./socks.ts";

const b = (...x: number[]) => new Uint8Array(x);

Deno.test("socks5: greeting, user/password, CONNECT by name; split anywhere needs more", () => {
  const greeting = [5, 1, 2];
  const auth = [1, 1, 0x75, 2, 0x70, 0x77];
  const connect = [5, 1, 0, 3, 4, 0x68, 0x6f, 0x73, 0x74, 1, 0xbb];
  const all = b(...greeting, ...auth, ...connect, 0x16);
  const m: SocksState = { version: 5, step: 0 };
  assertEquals(consumeSocksClient(m, all), all.length - 1);
  assertEquals(m.step, -1);
  // The greeting alone is consumed; then the rest once complete.
  const m2: SocksState = { version: 5, step: 0 };
  assertEquals(consumeSocksClient(m2, b(...greeting)), 3);
  assertEquals(consumeSocksClient(m2, b(...auth, ...connect.slice(0, 5))), auth.length);
  assertEquals(consumeSocksClient(m2, b(...connect.slice(0, 5))), SOCKS_NEED_MORE);
  assertEquals(consumeSocksClient(m2, b(...connect)), connect.length);
  assertEquals(m2.step, -1);
  assertEquals(consumeSocksClient({ version: 5, step: 2 }, b(4, 1, 0, 1, 0, 0, 0, 0, 0, 0)), SOCKS_NOT_SOCKS);
  assertEquals(consumeSocksClient({ version: 5, step: 2 }, b(5, 1, 0, 9, 0, 0)), SOCKS_NOT_SOCKS);
});

Deno.test("socks4/4a client and server; the tunnel is reported only when granted", () => {
  const m: SocksState = { version: 4, step: 0 };
  // SOCKS4a: IP 0.0.0.1, then user "u", then the host name.
  const req = b(4, 1, 1, 0xbb, 0, 0, 0, 1, 0x75, 0, 0x68, 0);
  assertEquals(consumeSocksClient(m, req.subarray(0, 10)), SOCKS_NEED_MORE);
  assertEquals(consumeSocksClient(m, req), req.length);
  let granted = 0;
  const s: SocksState = { version: 4, step: 0 };
  assertEquals(consumeSocksServer(s, b(0, 0x5a, 0, 0, 0, 0, 0, 0), () => granted++), 8);
  assertEquals(granted, 1);
  assertEquals(consumeSocksServer({ version: 4, step: 0 }, b(0, 0x5b, 0, 0, 0, 0, 0, 0), () => granted++), 8);
  assertEquals(granted, 1);
  const s5: SocksState = { version: 5, step: 0 };
  assertEquals(consumeSocksServer(s5, b(5, 0, 5, 0, 0, 1, 1, 2, 3, 4, 0, 80), () => granted++), 12);
  assertEquals(granted, 2);
});
