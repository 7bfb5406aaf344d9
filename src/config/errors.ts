/** Configuration errors: each names the file, the line and the dotted key, with a suggestion for typos. */

export interface ConfigIssue {
  file: string;
  /** 1-based; 0 when not tied to a line. */
  line: number;
  /** Dotted key ("" for the document itself). */
  key: string;
  message: string;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join("\n"));
    this.name = "ConfigError";
    this.issues = issues;
  }
}

function formatIssue(i: ConfigIssue): string {
  return `${i.file}${i.line ? `:${i.line}` : ""}: ${i.key ? `${i.key}: ` : ""}${i.message}`;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const t = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = t;
    }
  }
  return d[b.length];
}

/** " (did you mean X?)" for the closest option within a third of the word's length, else "". */
export function suggest(word: string, options: string[]): string {
  let best = "";
  let bestD = Infinity;
  for (const o of options) {
    const d = editDistance(word.toLowerCase(), o);
    if (d < bestD) [best, bestD] = [o, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? ` (did you mean ${best}?)` : "";
}
