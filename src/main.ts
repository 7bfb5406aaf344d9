/** ja4ebpf entry point: picks the command and hands over. Each command lives in src/cli/. */
import { UsageError } from "./cli/args.ts";
import { log } from "./log.ts";

export const USAGE = `ja4ebpf — JA4+ fingerprints of nginx and Apache clients, captured with eBPF

Usage:
  ja4ebpf run [--config FILE]          run the agent (default: JSON lines on stdout)
  ja4ebpf --validate [--json]          check kernel, capabilities and the attach plan; exit 0 if the agent can run
  ja4ebpf fingerprint --pcap FILE      fingerprint the TCP streams of a pcap/pcapng capture (JSON lines)
  ja4ebpf version                      version and build kind
  ja4ebpf cleanup [--config FILE]      remove tc filters and probe events of agents that did not stop cleanly

Every command takes --help.`;

type Command = (args: string[]) => Promise<number>;
const COMMANDS: Record<string, () => Promise<Command>> = {
  run: async () => (await import("./cli/run.ts")).main,
  fingerprint: async () => (await import("./cli/fingerprint.ts")).main,
  validate: async () => (await import("./cli/validate.ts")).main,
  version: async () => (await import("./cli/version.ts")).main,
  cleanup: async () => (await import("./cli/cleanup.ts")).main,
};

export async function main(argv: string[]): Promise<number> {
  let [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  // `--validate` is a top-level flag, as in the original system; the other flags may follow it.
  if (argv.includes("--validate")) {
    cmd = "validate";
    rest = argv.filter((a) => a !== "--validate");
  }
  if (cmd === "--version") cmd = "version";
  const load = COMMANDS[cmd];
  if (!load) {
    console.error(`ja4ebpf: unknown command or flag '${cmd}'\n\n${USAGE}`);
    return 2;
  }
  try {
    return await (await load())(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`ja4ebpf ${cmd}: ${e.message}\n\n${e.usage}`);
      return 2;
    }
    log.error("fatal", { command: cmd, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
