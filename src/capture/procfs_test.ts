import { assert, assertEquals } from "../testing/asserts.ts";
import { parseNetTcp, parseStat, processSockets, serverOfComm } from "./procfs.ts";

Deno.test("parseStat handles comm with spaces and parentheses", () => {
  const s = parseStat("4242 (my (odd) comm) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0");
  assertEquals(s, { pid: 4242, comm: "my (odd) comm", ppid: 1, startTicks: 987654 });
});

Deno.test("serverOfComm", async (t) => {
  for (
    const [comm, want] of [["nginx", "nginx"], ["apache2", "apache"], ["httpd", "apache"], [
      "bash",
      undefined,
    ]]
  ) {
    await t.step(String(comm), () => assertEquals(serverOfComm(comm!), want));
  }
});

Deno.test("parseNetTcp decodes IPv4 and IPv6 rows", () => {
  const v4 = parseNetTcp(
    "  sl  local_address rem_address   st\n" +
      "   0: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 12345 1\n",
    4,
  );
  assertEquals(v4, [{
    local: "127.0.0.1",
    localPort: 8080,
    remote: "127.0.0.1",
    remotePort: 54000,
    state: 1,
    inode: 12345,
    family: 4,
  }]);
  const v6 = parseNetTcp(
    "  sl  local_address                         remote_address                        st\n" +
      "   0: 00000000000000000000000001000000:0050 0000000000000000FFFF00000100007F:C350 01 0:0 0:0 0 0 0 777 1\n",
    6,
  );
  assertEquals(v6[0].local, "::1");
  assertEquals(v6[0].remote, "127.0.0.1");
  assertEquals(v6[0].inode, 777);
});

Deno.test("processSockets finds this process's own live TCP connection", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const client = await Deno.connect({ hostname: "127.0.0.1", port });
  const server = await listener.accept();
  try {
    const socks = processSockets([Deno.pid]);
    const listen = socks.find((s) => s.state === 10 && s.localPort === port);
    assert(listen, `no LISTEN socket on ${port} in ${JSON.stringify(socks)}`);
    const accepted = socks.find((s) => s.state === 1 && s.localPort === port);
    assert(accepted, "accepted connection not found");
    assertEquals(accepted.remotePort, (client.localAddr as Deno.NetAddr).port);
    assert(accepted.fd > 2);
  } finally {
    client.close();
    server.close();
    listener.close();
  }
});
