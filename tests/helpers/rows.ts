/** Test rows with every column filled, distinct per index (path = /r/<tag>/<i>). */
import type { Row } from "../../src/sink/row.ts";

export function testRow(i: number, tag = "t", baseMs = Date.UTC(2026, 0, 15, 12, 0, 0)): Row {
  return {
    ts: new Date(baseMs + i * 7).toISOString(),
    host: "agent-host",
    server: i % 2 ? "nginx" : "apache",
    pid: 1000 + (i % 50),
    capture: "tracepoint",
    src: i % 3 ? `10.0.${(i >> 8) & 255}.${i & 255}` : `2001:db8::${(i & 0xffff).toString(16)}`,
    src_port: 1024 + (i % 60000),
    dst: "127.0.0.1",
    dst_port: 443,
    method: "GET",
    path: `/r/${tag}/${i}`,
    http_version: "11",
    host_header: "example.test",
    user_agent: `curl/8.0 "quoted" \\ ünïcødé ${i}`,
    ja4h: "ge11nn05enus_a1b2c3d4e5f6_000000000000_000000000000",
    ja4h_r: "",
    ja4h_o: "",
    ja4h_ro: "",
    ja4: "t13d1516h2_8daaf6152771_b186095e22b6",
    ja4_r: "t13d1516h2_002f,0035_0005,000a_0403",
    ja4t: "65535_2-4-8-1-3_1460_7",
    tls_server_name: "example.test",
    truncated: i % 5 === 0,
  };
}
