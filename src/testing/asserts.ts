/**
 * Minimal assertions (JSR's @std/assert is unreachable from this workplace's registries).
 * Same names and semantics as @std/assert for the subset used here.
 */
export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

function fmt(v: unknown): string {
  return Deno.inspect(v, { depth: 10, colors: false, strAbbreviateSize: 2000, iterableLimit: 500 });
}

export function equal(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (a instanceof Map && b instanceof Map) {
    if (a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !equal(v, b.get(k))) return false;
    return true;
  }
  const ka = Object.keys(a as object).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b as object).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => equal((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (!equal(actual, expected)) {
    throw new AssertionError(
      `${msg ? msg + ": " : ""}values differ\nactual:   ${fmt(actual)}\nexpected: ${fmt(expected)}`,
    );
  }
}

export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  if (equal(actual, expected)) {
    throw new AssertionError(`${msg ? msg + ": " : ""}values equal: ${fmt(actual)}`);
  }
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  if (!re.test(actual)) {
    throw new AssertionError(`${msg ? msg + ": " : ""}${fmt(actual)} does not match ${re}`);
  }
}

export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  if (!actual.includes(expected)) {
    throw new AssertionError(`${msg ? msg + ": " : ""}${fmt(actual)} does not include ${fmt(expected)}`);
  }
}

export function assertGreater(a: number, b: number, msg?: string): void {
  if (!(a > b)) throw new AssertionError(`${msg ? msg + ": " : ""}expected ${a} > ${b}`);
}

export function assertThrows(
  fn: () => unknown,
  cls?: abstract new (...a: never[]) => Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (e) {
    if (cls && !(e instanceof cls)) throw new AssertionError(`expected ${cls.name}, got ${fmt(e)}`);
    if (includes && !(e instanceof Error && e.message.includes(includes))) {
      throw new AssertionError(`error message ${fmt((e as Error).message)} lacks ${fmt(includes)}`);
    }
    return e as Error;
  }
  throw new AssertionError("expected an exception");
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: abstract new (...a: never[]) => Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    if (cls && !(e instanceof cls)) throw new AssertionError(`expected ${cls.name}, got ${fmt(e)}`);
    if (includes && !(e instanceof Error && e.message.includes(includes))) {
      throw new AssertionError(`error message ${fmt((e as Error).message)} lacks ${fmt(includes)}`);
    }
    return e as Error;
  }
  throw new AssertionError("expected a rejection");
}
