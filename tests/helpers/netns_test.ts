/**
 * netns + veth + tcpdump + Chromium: clients in a namespace reach nginx on the host side of a veth with
 * offloads off, so the capture holds real wire segments (Chromium's ~2 KB ClientHello in ≥ 2 of them, the
 * small-MSS client's in ≥ 3) and Chromium's key log matches the ClientHello it sent. Needs root.
 */
import { assert, assertEquals, assertGreater, assertStringIncludes } from "../../src/testing/asserts.ts";
import { createNetns } from "./netns.ts";
import { startNginx } from "./servers.ts";
import { startTcpdump, tsharkFields } from "./capture.ts";
import { chromium, curl, smallMssClient } from "./clients.ts";
import { makeTempDir, runOk } from "./proc.ts";

const HTTP = 20080;
const TLS = 20443;

interface Hello {
  srcPort: number;
  segments: number;
  length: number;
  random: string;
}

/** ClientHellos in a pcap: source port, how many TCP segments carried it, its length, its client random. */
async function clientHellos(pcap: string): Promise<Hello[]> {
  const rows = await tsharkFields(pcap, "tls.handshake.type==1", [
    "tcp.srcport",
    "tcp.segment.count",
    "tls.record.length",
    "tls.handshake.random",
  ]);
  // A ClientHello in one segment has no reassembly fields.
  return rows.map(([p, n, len, r]) => ({
    srcPort: Number(p),
    segments: n ? Number(n) : 1,
    length: Number(len.split(",")[0]),
    random: r,
  }));
}

Deno.test("netns + veth: curl, Chromium and a small-MSS client from the namespace; tcpdump on the veth", async (t) => {
  await using ns = await createNetns("ja4t-harness");
  await using srv = await startNginx({ port: HTTP, tlsPort: TLS, hosts: [ns.hostAddr] });
  const tmp = await makeTempDir("ja4ebpf-netns-test-");
  try {
    await t.step("the veth has MTU 1500 and segmentation/receive offloads off on both ends", async () => {
      for (const [dev, inside] of [[ns.hostIf, false], [ns.nsIf, true]] as const) {
        const link = inside
          ? (await ns.exec(["ip", "link", "show", dev])).stdout
          : await runOk(["ip", "link", "show", dev]);
        assertStringIncludes(link, "mtu 1500");
        const k = inside
          ? (await ns.exec(["ethtool", "-k", dev])).stdout
          : await runOk(["ethtool", "-k", dev]);
        for (
          const f of ["tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload"]
        ) {
          assertStringIncludes(k, `${f}: off`);
        }
      }
    });

    await t.step(
      "curl inside the namespace reaches nginx on the host side, from the namespace address",
      async () => {
        const r = await curl(["-f", srv.url], { netns: ns });
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, srv.body);
        const log = await srv.waitForRequests(1);
        assertEquals(log[0].remoteAddr, ns.nsAddr);
        // And the namespace really is separate: its loopback has no nginx.
        const lo = await curl([`http://127.0.0.1:${HTTP}/`], { netns: ns, timeoutMs: 3000 });
        assert(lo.code !== 0, "nothing listens on the namespace's loopback");
      },
    );

    const keylog = `${tmp}/chromium.keylog`;
    const cap = await startTcpdump({ iface: ns.hostIf, filter: `tcp port ${TLS}`, file: `${tmp}/tls.pcap` });
    let mssPort = 0;
    let chrome: Hello[] = [];
    try {
      await t.step("headless Chromium in the namespace loads the TLS page", async () => {
        const r = await chromium({ url: srv.tlsUrl!, netns: ns, keylogFile: keylog });
        assertEquals(r.code, 0, r.stderr.slice(-2000));
        assertStringIncludes(r.dom, srv.body.trim());
      });
      await t.step("a client with TCP_MAXSEG 200 completes TLS and HTTP", async () => {
        const r = await smallMssClient({ host: ns.hostAddr, port: TLS, mss: 200, netns: ns });
        assertEquals(r.tlsVersion, "TLSv1.3");
        assertStringIncludes(r.response, "HTTP/1.1 200 OK");
        mssPort = r.localPort;
      });
    } finally {
      await cap.stop();
    }
    assertEquals(cap.stats?.droppedByKernel, 0);

    await t.step("the capture holds ClientHellos split over several real segments", async () => {
      const hellos = await clientHellos(cap.file);
      const small = hellos.filter((h) => h.srcPort === mssPort);
      chrome = hellos.filter((h) => h.srcPort !== mssPort);
      assertEquals(small.length, 1, JSON.stringify(hellos));
      assert(small[0].segments >= 3, `small-MSS ClientHello in ${small[0].segments} segments`);
      assertGreater(chrome.length, 0, "Chromium's ClientHello captured");
      for (const h of chrome) {
        assert(h.segments >= 2, `Chromium ClientHello (${h.length} bytes) in ${h.segments} segments`);
      }
      // No segment exceeds what MTU 1500 allows: no GSO/GRO super-packets.
      const lens = (await tsharkFields(cap.file, "", ["tcp.len"])).map(([l]) => Number(l));
      assert(Math.max(...lens) <= 1460, `largest TCP payload ${Math.max(...lens)}`);
      // The small-MSS client advertises 200 in its SYN and never sends more than 200 bytes per segment.
      const rows = await tsharkFields(cap.file, `tcp.srcport==${mssPort}`, [
        "tcp.options.mss_val",
        "tcp.len",
      ]);
      assertEquals(rows[0][0], "200", "MSS option of the SYN");
      assert(rows.every((r) => Number(r[1]) <= 200), "segments of at most 200 bytes");
      console.log(
        `ClientHellos: ${hellos.map((h) => `${h.length}-byte record in ${h.segments} segs`).join(", ")}; ` +
          `${cap.stats?.captured} packets`,
      );
    });

    await t.step("Chromium's key log has the secrets of the ClientHellos it sent", async () => {
      const text = await Deno.readTextFile(keylog);
      for (const h of chrome) {
        assertStringIncludes(text, `CLIENT_TRAFFIC_SECRET_0 ${h.random.replaceAll(":", "")}`);
      }
    });
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  await ns.close();
  assertEquals((await runOk(["ip", "netns", "list"])).includes("ja4t-harness"), false, "namespace deleted");
});
