/**
 * IP addresses as text, one implementation for the whole program (BPF events, /proc, captured packets).
 * IPv6 follows RFC 5952: lower case, the longest run of two or more zero groups as `::`.
 */

export function formatIPv4(b: ArrayLike<number>, o = 0): string {
  return `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;
}

/**
 * `mapped` says how an IPv4-mapped address (::ffff:a.b.c.d) is written: "v6" keeps the prefix (what
 * Wireshark prints for a packet); "v4" gives the plain IPv4 address — what the agent uses for sockets, so
 * a client of a dual-stack listener has the same address in syscall events as in its IPv4 packets.
 */
export function formatIPv6(b: ArrayLike<number>, o = 0, mapped: "v4" | "v6" = "v6"): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[o + 2 * i] << 8) | b[o + 2 * i + 1]);
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return (mapped === "v4" ? "" : "::ffff:") + formatIPv4(b, o + 12);
  }
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}
