import { parseFlags } from "./args.ts";
import { BUILD_KIND, VERSION } from "../version.ts";

const USAGE = "Usage: ja4ebpf version [--json]\n  Prints the version, the build kind and the Deno runtime.";

export function main(args: string[]): Promise<number> {
  const { values, help } = parseFlags(args, { json: { type: "boolean" } }, USAGE);
  if (help) {
    console.log(USAGE);
    return Promise.resolve(0);
  }
  const info = { version: VERSION, build: BUILD_KIND, deno: Deno.version.deno, v8: Deno.version.v8 };
  console.log(
    values.json
      ? JSON.stringify(info)
      : `ja4ebpf ${VERSION} (${BUILD_KIND} build, deno ${Deno.version.deno})`,
  );
  return Promise.resolve(0);
}
