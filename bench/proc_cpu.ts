/** CPU time of processes from /proc, for the benchmarks. */

export const TICK_US = 1e6 / Number(
  new TextDecoder().decode(
    new Deno.Command("getconf", { args: ["CLK_TCK"] })
      .outputSync().stdout,
  ).trim() || 100,
);

/**
 * The overload policy run: every thread of the agent at nice 19, below the server (the unit's Nice= and
 * CPUWeight= do the same for a whole service). Threads are reniced one by one: setpriority(PRIO_PROCESS, pid)
 * moves only the thread whose id is the pid.
 */
export function starve(pid: number): void {
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    new Deno.Command("renice", { args: ["-n", "19", "-p", t.name], stdout: "null", stderr: "null" })
      .outputSync();
  }
}

/**
 * Every thread of the agent under SCHED_BATCH, as the unit's CPUSchedulingPolicy=batch does: its wake-ups do not
 * preempt the running server.
 */
export function batchPolicy(pid: number): void {
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    new Deno.Command("chrt", { args: ["-b", "-p", "0", t.name], stdout: "null", stderr: "null" })
      .outputSync();
  }
}

/** utime and stime of a process (all its threads), µs; 0 once it is gone. */
export function cpuSplitUs(pid: number): { user: number; sys: number } {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the parenthesised command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { user: Number(f[11]) * TICK_US, sys: Number(f[12]) * TICK_US };
  } catch {
    return { user: 0, sys: 0 };
  }
}
