/**
 * Runs tests/kernels/run.sh and reads what the guest reported. The guest prints `JA4K KIND key=value …`
 * lines on the serial console; run.sh prints them without the prefix, then a `HOST …` line.
 */

/** One reported line: its kind (BOOT, CHECK, METHOD…) and its key=value pairs ("…" values may hold spaces). */
export interface GuestLine {
  kind: string;
  fields: Record<string, string>;
  raw: string;
}

export interface KernelRun {
  /** run.sh's exit code: the guest's result, 124 on timeout, 125 when the guest never reported. */
  code: number;
  lines: GuestLine[];
  stdout: string;
  stderr: string;
  seconds: number;
}

export interface RunOptions {
  requests?: number;
  methods?: string[];
  idle?: number;
  perfbuf?: boolean;
  timeoutSeconds?: number;
  /** The guest's architecture (run.sh --arch): x86 (default) or arm64. */
  arch?: "x86" | "arm64";
}

const KIND = /^[A-Z]+$/;
const PAIR = /([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g;

/** Parses run.sh's output; lines that are not KIND key=value… (e.g. "log: FILE") are skipped. */
export function parseKernelRun(stdout: string): GuestLine[] {
  const out: GuestLine[] = [];
  for (const raw of stdout.split("\n")) {
    const sp = raw.indexOf(" ");
    const kind = sp < 0 ? raw : raw.slice(0, sp);
    if (!KIND.test(kind)) continue;
    const fields: Record<string, string> = {};
    // VALIDATE carries JSON as its last field: keep it whole rather than splitting it into pairs.
    const rest = sp < 0 ? "" : raw.slice(sp + 1);
    const json = rest.indexOf("json=");
    const plain = json < 0 ? rest : rest.slice(0, json);
    for (const m of plain.matchAll(PAIR)) fields[m[1]] = m[2].replace(/^"|"$/g, "");
    if (json >= 0) fields.json = rest.slice(json + 5).replace(/ t=[0-9.]+$/, "");
    out.push({ kind, fields, raw });
  }
  return out;
}

/**
 * Boots one kernel through run.sh and returns what the guest reported; version "host" runs the same checks on
 * this machine's kernel through host.sh (no VM).
 */
export async function runKernel(version: string, opts: RunOptions = {}): Promise<KernelRun> {
  const host = version === "host";
  const script = new URL(host ? "./host.sh" : "./run.sh", import.meta.url).pathname;
  const args = host ? [script] : [script, version];
  if (opts.requests !== undefined) args.push("--requests", String(opts.requests));
  if (opts.methods) args.push("--methods", opts.methods.join(" "));
  if (opts.idle !== undefined) args.push("--idle", String(opts.idle));
  if (opts.perfbuf === false) args.push("--no-perfbuf");
  if (opts.timeoutSeconds !== undefined) args.push("--timeout", String(opts.timeoutSeconds));
  if (opts.arch !== undefined && !host) args.push("--arch", opts.arch);
  const t0 = performance.now();
  const r = await new Deno.Command("bash", { args, stdout: "piped", stderr: "piped" }).output();
  const stdout = new TextDecoder().decode(r.stdout);
  const lines = parseKernelRun(stdout);
  // A round the guest ran again (a known TCG flake, see guest/agent.sh) passes only on its second run; say so.
  for (const l of lines.filter((l) => l.kind === "RETRY" || l.kind === "DIAG")) {
    console.log(`guest ${version}${opts.arch ? ` ${opts.arch}` : ""}: ${l.kind} ${JSON.stringify(l.fields)}`);
  }
  return {
    code: r.code,
    lines,
    stdout,
    stderr: new TextDecoder().decode(r.stderr),
    seconds: (performance.now() - t0) / 1000,
  };
}
