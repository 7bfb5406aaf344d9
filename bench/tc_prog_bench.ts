/**
 * The tc program alone, per kind of packet, in the kernel without the network around it: BPF_PROG_TEST_RUN
 * runs `tc_ingress` of the compiled object on a synthetic Ethernet frame `--repeat` times and reports the
 * mean ns of one run (the kernel's own clock around the program; no tc or softirq machinery). With `--base DIR`
 * the object of another checkout (DIR/dist/bpf/ja4ebpf.bpf.o) runs beside this one, alternating in rounds,
 * and the table gains the ratio. Root.
 *
 *   deno run -A bench/tc_prog_bench.ts [--base DIR] [--rounds=5] [--repeat=200000]
 *
 * Every packet of every connection on a watched interface passes here (both directions on loopback), most
 * of them for nothing: bare ACKs, the server's own segments, a keep-alive connection's later requests.
 */
import { parseArgs } from "node:util";
import type { BpfObject, BpfProgram } from "../src/bpf/object.ts";
import { ListenPorts } from "../src/bpf/maps.ts";
import { loadPrograms } from "../tests/helpers/bpf.ts";
import { ACK, frame, MSS_ONLY, PACKETS, PSH, SERVER, SYN } from "../tests/helpers/frames.ts";
import { embeddedObject } from "../src/bpf/embedded.ts";
import { median } from "./median.ts";

/** The object's tc program loaded alone, SERVER watched. */
function loadTc(bytes: Uint8Array): { obj: BpfObject; prog: BpfProgram } {
  const obj = loadPrograms(["tc_ingress"], bytes);
  ListenPorts.of(obj.map("listen_ports"))!.add(SERVER);
  return { obj, prog: obj.program("tc_ingress") };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { base: { type: "string" }, rounds: { type: "string" }, repeat: { type: "string" } },
  });
  const rounds = Number(values.rounds ?? 5), repeat = Number(values.repeat ?? 200_000);
  const variants: [string, Uint8Array][] = [["this tree", embeddedObject()]];
  if (values.base) variants.push(["base", Deno.readFileSync(`${values.base}/dist/bpf/ja4ebpf.bpf.o`)]);
  const loaded = variants.map(([name, bytes]) => ({ name, ...loadTc(bytes) }));
  const ns = new Map<string, number[]>();
  const add = (kind: string, v: string, x: number) =>
    ns.set(`${kind}\0${v}`, [...ns.get(`${kind}\0${v}`) ?? [], x]);
  // New connections: each client port's SYN, then its first bytes (plain text), one run each — the two
  // packets per connection that do more than look.
  const CONN = "connection: SYN + first bytes (plain), new ports";
  const conns = Math.max(1, Math.floor(repeat / 20));
  try {
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 ? [...loaded].reverse() : loaded;
      for (const [kind, pkt] of PACKETS) {
        for (const v of order) add(kind, v.name, v.prog.testRun(pkt, repeat).nsPerRun);
      }
    }
    // After the single packets, whose port stays watched: the new connections make a plain port of it.
    for (let r = 0; r < rounds; r++) {
      for (const v of r % 2 ? [...loaded].reverse() : loaded) {
        let sum = 0;
        for (let i = 0; i < conns; i++) {
          const port = 20_000 + ((r * conns + i) % 40_000);
          sum += v.prog.testRun(frame(port, SERVER, SYN, 0, MSS_ONLY)).nsPerRun +
            v.prog.testRun(frame(port, SERVER, ACK | PSH, 80, [], 1001)).nsPerRun;
        }
        add(CONN, v.name, Math.round(sum / conns));
      }
    }
  } finally {
    for (const v of loaded) v.obj.close();
  }
  const med = (kind: string, v: string) => median(ns.get(`${kind}\0${v}`)!);
  console.log(`tc_ingress, BPF_PROG_TEST_RUN × ${repeat}, median of ${rounds} rounds (ns per run)\n`);
  console.log(`| packet | ${loaded.map((v) => v.name).join(" | ")} |${values.base ? " this / base |" : ""}`);
  console.log(`| --- | ${loaded.map(() => "---:").join(" | ")} |${values.base ? " ---: |" : ""}`);
  for (const kind of [...PACKETS.map(([k]) => k), CONN]) {
    const cells = loaded.map((v) => String(med(kind, v.name)));
    const ratio = values.base ? ` ${(med(kind, "this tree") / med(kind, "base")).toFixed(2)} |` : "";
    console.log(`| ${kind} | ${cells.join(" | ")} |${ratio}`);
  }
}
