/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Keeps traced_pids current between the agent's /proc scans, so a worker forked
 * by a traced master (nginx reload, Apache graceful restart) is traced before it
 * runs, and a restarted server is traced from its exec:
 *  - fork: a new process (not a thread) of a traced process inherits its kind.
 *    task_newtask fires at the end of copy_process, before the child is woken.
 *  - exec: a process whose new comm is a server's ("nginx", "apache2", "httpd")
 *    is added; a traced process that execs anything else (CGI, piped logger) is
 *    removed.
 *  - exit: the tgid is removed when its last thread exits (signal->live is 0:
 *    do_exit decrements it before the tracepoint), so a reused pid starts untraced.
 * Two variants with one body: tp_btf (5.5+) and classic tracepoints (4.x, RHEL 8).
 */

#define JA4_CLONE_THREAD 0x00010000

/* Inherits the current (parent) process's kind into a new process. */
static __always_inline void follow_fork(__u32 child, __u64 clone_flags)
{
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	__u32 *kind, k;

	if (clone_flags & JA4_CLONE_THREAD)
		return;
	kind = bpf_map_lookup_elem(&traced_pids, &parent);
	if (!kind || child == self_tgid)
		return;
	k = *kind;
	if (bpf_map_update_elem(&traced_pids, &child, &k, BPF_ANY))
		count_drop(JA4_DROP_FOLLOW_FULL);
}

/* enum ja4_server_kind of a comm, 0 for none. */
static __always_inline __u32 server_of_comm(const char *c)
{
	if (c[0] == 'n' && c[1] == 'g' && c[2] == 'i' && c[3] == 'n' && c[4] == 'x' && c[5] == 0)
		return JA4_SERVER_NGINX;
	if (c[0] == 'a' && c[1] == 'p' && c[2] == 'a' && c[3] == 'c' && c[4] == 'h' && c[5] == 'e' && c[6] == '2' &&
	    c[7] == 0)
		return JA4_SERVER_APACHE;
	if (c[0] == 'h' && c[1] == 't' && c[2] == 't' && c[3] == 'p' && c[4] == 'd' && c[5] == 0)
		return JA4_SERVER_APACHE;
	return 0;
}

/* After a successful exec: the comm already names the new binary. */
static __always_inline void follow_exec(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char comm[JA4_COMM_LEN];
	__u32 kind;

	if (tgid == self_tgid)
		return;
	bpf_get_current_comm(comm, sizeof(comm));
	kind = server_of_comm(comm);
	if (kind && (follow_servers & (1u << kind))) {
		if (bpf_map_update_elem(&traced_pids, &tgid, &kind, BPF_ANY))
			count_drop(JA4_DROP_FOLLOW_FULL);
	} else if (bpf_map_lookup_elem(&traced_pids, &tgid)) {
		bpf_map_delete_elem(&traced_pids, &tgid);
	}
}

/* A task of `task`'s group exits: forget the tgid once the whole group is dead. */
static __always_inline void follow_exit(struct task_struct *task)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return; /* other threads still run (e.g. the leader called pthread_exit) */
	bpf_map_delete_elem(&traced_pids, &tgid);
}

/* ---- tp_btf (5.5+): typed arguments, no trace record built ---- */

SEC("tp_btf/task_newtask")
int BPF_PROG(follow_fork_btf, struct task_struct *task, __u64 clone_flags)
{
	follow_fork(BPF_CORE_READ(task, pid), clone_flags);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(follow_exec_btf)
{
	follow_exec();
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(follow_exit_btf, struct task_struct *task)
{
	follow_exit(task);
	return 0;
}

/* ---- classic tracepoints (any kernel with BPF tracepoints): CO-RE-relocated records ---- */

SEC("tracepoint/task/task_newtask")
int follow_fork_tp(struct trace_event_raw_task_newtask *ctx)
{
	follow_fork((__u32)ctx->pid, ctx->clone_flags);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int follow_exec_tp(void *ctx)
{
	follow_exec();
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int follow_exit_tp(void *ctx)
{
	follow_exit(ja4_current_task());
	return 0;
}
