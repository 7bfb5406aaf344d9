import { parseArgs } from "node:util";

/** A command-line mistake: main prints it with the usage and exits 2. */
export class UsageError extends Error {
  constructor(message: string, readonly usage: string) {
    super(message);
    this.name = "UsageError";
  }
}

export type FlagSpec = Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>;

/**
 * parseArgs in strict mode, with its errors turned into a UsageError that names the flag.
 * `--help`/`-h` is accepted by every command.
 */
export function parseFlags<T extends FlagSpec>(
  args: string[],
  spec: T,
  usage: string,
  allowPositionals = false,
): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[]; help: boolean } {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...spec, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals,
    });
    const v = values as Record<string, string | boolean | string[] | undefined>;
    return { values: v, positionals, help: v.help === true };
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new UsageError(msg.replace(/\. To specify a positional argument.*$/s, ""), usage);
  }
}
