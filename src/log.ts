/**
 * The one place that writes to the console. Logs go to stderr (stdout carries rows), as JSON or plain
 * text, with levels; identical messages repeated within a window are collapsed into one line with a count.
 */
export type Level = "debug" | "info" | "warn" | "error";
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LogOptions {
  level: Level;
  format: "plain" | "json";
  /** Repeated identical messages are logged at most once per window, with a suppressed count. */
  rateLimitMs: number;
}

const opts: LogOptions = { level: "info", format: "plain", rateLimitMs: 10_000 };
const recent = new Map<string, { at: number; suppressed: number }>();
const enc = new TextEncoder();
let sink: (line: string) => void = (line) => Deno.stderr.writeSync(enc.encode(line + "\n"));

export function configureLog(o: Partial<LogOptions>): void {
  Object.assign(opts, o);
}

/** Redirects log lines (tests capture them). Returns the previous sink. */
export function setLogSink(fn: (line: string) => void): (line: string) => void {
  const prev = sink;
  sink = fn;
  return prev;
}

function emit(level: Level, msg: string, fields?: Record<string, unknown>): void {
  if (ORDER[level] < ORDER[opts.level]) return;
  const now = Date.now();
  // Identical lines (message and fields) are collapsed; lines that differ in a field are not repeats.
  const key = level + "\0" + msg + (fields ? "\0" + JSON.stringify(fields) : "");
  const r = recent.get(key);
  let suppressed = 0;
  if (r && now - r.at < opts.rateLimitMs) {
    r.suppressed++;
    return;
  }
  if (r) suppressed = r.suppressed;
  recent.set(key, { at: now, suppressed: 0 });
  if (recent.size > 4096) recent.clear();
  const f = suppressed > 0 ? { ...fields, suppressed } : fields;
  if (opts.format === "json") {
    sink(JSON.stringify({ ts: new Date(now).toISOString(), level, msg, ...f }));
  } else {
    const extra = f && Object.keys(f).length
      ? " " +
        Object.entries(f).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ")
      : "";
    sink(`${new Date(now).toISOString()} ${level.toUpperCase()} ${msg}${extra}`);
  }
}

export const log = {
  debug: (msg: string, fields?: Record<string, unknown>) => emit("debug", msg, fields),
  info: (msg: string, fields?: Record<string, unknown>) => emit("info", msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>) => emit("warn", msg, fields),
  error: (msg: string, fields?: Record<string, unknown>) => emit("error", msg, fields),
};
