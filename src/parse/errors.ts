/**
 * The result type shared by every parser in src/parse/ (TLS, HTTP/1, HTTP/2, TCP options, pcap).
 * Parsers never throw on bad input: they return `{ ok: false, error }` with a typed code, and stream
 * parsers count each error in an `ErrorCounts` record so every drop is visible.
 */

export type ParseErrorCode =
  /** The input ended before the structure was complete (one-shot parsers only). */
  | "truncated"
  /** A length, count or value that cannot be right. */
  | "malformed"
  /** Larger than the cap the parser enforces (e.g. a 64 KiB handshake or request head). */
  | "oversize"
  /** Well-formed but not something this parser handles (e.g. a record type other than handshake). */
  | "unsupported";

export class ParseError extends Error {
  readonly code: ParseErrorCode;
  /** Byte offset in the parser's input where the problem was found, when known. */
  readonly offset: number | undefined;
  constructor(code: ParseErrorCode, message: string, offset?: number) {
    super(message);
    this.name = "ParseError";
    this.code = code;
    this.offset = offset;
  }
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: ParseError; needMore?: false };

/** What a stream parser returns when its buffered bytes are a valid prefix but not yet a whole unit. */
export interface NeedMore {
  readonly ok: false;
  readonly needMore: true;
  readonly error?: undefined;
}
export const NEED_MORE: NeedMore = Object.freeze({ ok: false, needMore: true }) as NeedMore;

/** Result of a stream parser's `next()`: a value, an error, or "push more bytes". */
export type Streamed<T> = Parsed<T> | NeedMore;

export function ok<T>(value: T): { ok: true; value: T } {
  return { ok: true, value };
}

export function fail(code: ParseErrorCode, message: string, offset?: number): {
  ok: false;
  error: ParseError;
} {
  return { ok: false, error: new ParseError(code, message, offset) };
}

/** Per-code error counters kept by stream parsers. */
export type ErrorCounts = Record<ParseErrorCode, number>;

export function newErrorCounts(): ErrorCounts {
  return { truncated: 0, malformed: 0, oversize: 0, unsupported: 0 };
}

/** Wraps a parser so an unexpected exception (a bug) still comes back as a typed "malformed" error. */
export function guard<T>(fn: () => Parsed<T>): Parsed<T> {
  try {
    return fn();
  } catch (e) {
    if (e instanceof ParseError) return { ok: false, error: e };
    return fail("malformed", `parser exception: ${e instanceof Error ? e.message : String(e)}`);
  }
}
