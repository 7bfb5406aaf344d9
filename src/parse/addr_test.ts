import { assertEquals } from "../testing/asserts.ts";
import { formatIPv4, formatIPv6 } from "./addr.ts";

const h = (s: string) => Uint8Array.from(s.match(/../g)!.map((x) => parseInt(x, 16)));

Deno.test("formatIPv6: RFC 5952 text", async (t) => {
  const cases: [string, string, string][] = [
    ["00000000000000000000000000000000", "::", "::"],
    ["00000000000000000000000000000001", "::1", "::1"],
    ["20010db8000000000001000000000001", "2001:db8::1:0:0:1", "2001:db8::1:0:0:1"],
    ["20010db8000100000001000100010001", "2001:db8:1:0:1:1:1:1", "2001:db8:1:0:1:1:1:1"],
    ["fe800000000000000202b3fffe1e8329", "fe80::202:b3ff:fe1e:8329", "fe80::202:b3ff:fe1e:8329"],
    ["00000000000000000000ffff7f000001", "::ffff:127.0.0.1", "127.0.0.1"],
  ];
  for (const [hex, v6, v4] of cases) {
    await t.step(v6, () => {
      assertEquals(formatIPv6(h(hex)), v6);
      assertEquals(formatIPv6(h(hex), 0, "v4"), v4);
      assertEquals(formatIPv6(h("aabb" + hex), 2), v6, "at an offset");
    });
  }
});

Deno.test("formatIPv4", () => {
  assertEquals(formatIPv4([10, 0, 0, 1]), "10.0.0.1");
  assertEquals(formatIPv4([9, 9, 192, 168, 1, 2], 2), "192.168.1.2");
});
