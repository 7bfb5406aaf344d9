/**
 * A network namespace joined to the root namespace by a veth pair, so clients inside it reach servers in the
 * root namespace over a real link: MTU 1500 and segmentation/receive offloads off on both ends, which makes
 * what tcpdump sees on the veth the segments TCP really sent (no 64 KiB GSO/GRO super-packets as on lo).
 *
 *   root ns: <hostIf> 10.200.X.1/24   <-- veth -->   ns NAME: <nsIf> 10.200.X.2/24
 *
 * Servers stay in the root namespace and listen on hostAddr.
 */
import {
  HarnessError,
  nsArgv,
  requireRoot,
  requireTool,
  run,
  runOk,
  type RunOptions,
  type RunResult,
} from "./proc.ts";

export interface Netns extends AsyncDisposable {
  name: string;
  /** veth end in the root namespace. */
  hostIf: string;
  /** veth end inside the namespace. */
  nsIf: string;
  /** 10.200.X.1 */
  hostAddr: string;
  /** 10.200.X.2 */
  nsAddr: string;
  subnet: number;
  mtu: number;
  /** Runs argv inside the namespace (`ip netns exec NAME ...`). */
  exec(cmd: string[], opts?: Omit<RunOptions, "netns">): Promise<RunResult>;
  /** argv that runs cmd inside the namespace, for callers that spawn themselves. */
  argv(cmd: string[]): string[];
  close(): Promise<void>;
}

export interface NetnsOptions {
  /** X in 10.200.X.0/24; by default derived from the name, skipping subnets already on an interface. */
  subnet?: number;
  /** Default 1500. */
  mtu?: number;
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

async function usedSubnets(ip: string): Promise<Set<number>> {
  const out = await runOk([ip, "-4", "-o", "addr", "show"]);
  const used = new Set<number>();
  for (const m of out.matchAll(/inet 10\.200\.(\d+)\./g)) used.add(Number(m[1]));
  return used;
}

async function linkExists(ip: string, dev: string): Promise<boolean> {
  return (await run([ip, "link", "show", "dev", dev])).code === 0;
}

export async function createNetns(name: string, opts: NetnsOptions = {}): Promise<Netns> {
  requireRoot("createNetns");
  const ip = requireTool("ip", "iproute2");
  const ethtool = requireTool("ethtool", "ethtool");
  const sysctl = requireTool("sysctl", "procps");
  if (!/^[A-Za-z0-9_.-]{1,40}$/.test(name)) throw new HarnessError(`bad netns name ${JSON.stringify(name)}`);
  const mtu = opts.mtu ?? 1500;
  // Interface names are limited to 15 bytes: name them after a hash of the namespace name.
  const tag = hash(name).toString(36).slice(0, 6);
  const hostIf = `j4${tag}h`;
  const nsIf = `j4${tag}n`;

  // Leftovers of a crashed run with the same name are ours: remove them first.
  await run([ip, "netns", "del", name]);
  if (await linkExists(ip, hostIf)) await run([ip, "link", "del", hostIf]);

  let subnet = opts.subnet;
  if (subnet === undefined) {
    const used = await usedSubnets(ip);
    const start = hash(name) % 250 + 1;
    for (let i = 0; i < 250 && subnet === undefined; i++) {
      const x = (start - 1 + i) % 250 + 1;
      if (!used.has(x)) subnet = x;
    }
    if (subnet === undefined) throw new HarnessError("no free 10.200.X.0/24 subnet");
  }
  if (!Number.isInteger(subnet) || subnet < 1 || subnet > 254) throw new HarnessError(`bad subnet ${subnet}`);
  const hostAddr = `10.200.${subnet}.1`;
  const nsAddr = `10.200.${subnet}.2`;

  let created = false;
  const close = async () => {
    if (!created) return;
    created = false;
    // Deleting the namespace destroys its veth end, which takes the peer with it.
    await run([ip, "netns", "del", name]);
    if (await linkExists(ip, hostIf)) await run([ip, "link", "del", hostIf]);
  };
  const inNs = (cmd: string[]) => nsArgv(cmd, name);
  try {
    await runOk([ip, "netns", "add", name]);
    created = true;
    await runOk([
      ip,
      "link",
      "add",
      hostIf,
      "mtu",
      String(mtu),
      "type",
      "veth",
      "peer",
      "name",
      nsIf,
      "mtu",
      String(mtu),
      "netns",
      name,
    ]);
    // No IPv6 on the link: router solicitations and DAD would be noise in captures.
    await run([sysctl, "-qw", `net.ipv6.conf.${hostIf}.disable_ipv6=1`]);
    await run(inNs([sysctl, "-qw", `net.ipv6.conf.${nsIf}.disable_ipv6=1`]));
    await runOk([ip, "addr", "add", `${hostAddr}/24`, "dev", hostIf]);
    await runOk(inNs([ip, "addr", "add", `${nsAddr}/24`, "dev", nsIf]));
    for (const feat of ["tso", "gso", "gro", "lro"]) {
      // veth reports lro as fixed off on some kernels; ethtool then fails although the state is what we want.
      await run([ethtool, "-K", hostIf, feat, "off"]);
      await run(inNs([ethtool, "-K", nsIf, feat, "off"]));
    }
    for (const [dev, wrap] of [[hostIf, (c: string[]) => c], [nsIf, inNs]] as const) {
      const k = await runOk(wrap([ethtool, "-k", dev]));
      for (
        const f of ["tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload"]
      ) {
        if (!new RegExp(`^${f}: off`, "m").test(k)) throw new HarnessError(`${dev}: ${f} still on:\n${k}`);
      }
    }
    await runOk([ip, "link", "set", hostIf, "up"]);
    await runOk(inNs([ip, "link", "set", nsIf, "up"]));
    await runOk(inNs([ip, "link", "set", "lo", "up"]));
    return {
      name,
      hostIf,
      nsIf,
      hostAddr,
      nsAddr,
      subnet,
      mtu,
      exec: (cmd, o = {}) => run(cmd, { ...o, netns: name }),
      argv: inNs,
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
