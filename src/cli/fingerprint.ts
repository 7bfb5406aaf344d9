import { parseFlags } from "./args.ts";

const USAGE = "Usage: ja4ebpf fingerprint (not built yet)";

export function main(args: string[]): Promise<number> {
  const { help } = parseFlags(args, {}, USAGE);
  if (help) console.log(USAGE);
  return Promise.resolve(help ? 0 : 1);
}
