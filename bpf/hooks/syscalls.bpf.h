/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Bytes read by traced servers through syscalls: recvfrom (nginx, plain HTTP),
 * read/readv (Apache without uprobes, nginx with TLS), close.
 * Every recvfrom variant shares one entry body (stash_enter) and one return
 * body (stash_exit); only the way arguments are fetched differs.
 */

/*
 * A traced thread's syscall on `fd`, at its entry or (exit-only programs) its exit: inside SSL_read or
 * SSL_do_handshake this is that SSL *'s fd (learned before its return probe runs). Returns false when the
 * bytes are apr_socket_recv's (its uprobe pair reports them). `traced` is the process's traced_pids value:
 * its counters say whether those entry probes ever ran in it (they raise them before the call's read), so
 * nginx's plain reads, and its TLS reads inside ngx_ssl_recv (whose probe has the fd), skip both lookups.
 */
static __always_inline bool learn_fd(__u64 id, __s32 fd, __u32 traced)
{
	if (JA4_TRACED_COUNTER(traced, JA4_TRACED_SSL_SHIFT)) {
		struct ssl_stash *ss = bpf_map_lookup_elem(&ssl_stash, &id);

		if (ss) {
			struct ssl_key k = {.ssl = ss->ssl, .tgid = id >> 32};
			ss->fd = fd;
			bpf_map_update_elem(&ssl_fds, &k, &fd, BPF_ANY);
		}
	}
	if (!JA4_TRACED_COUNTER(traced, JA4_TRACED_APR_SHIFT))
		return true;
	return !bpf_map_lookup_elem(&apr_stash, &id);
}

/* Remembers (fd, buf) of a syscall a traced thread entered. */
static __always_inline void stash_enter(__u8 hook, __s32 fd, __u64 buf, __u32 iovcnt, bool is_iov)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sys_stash st = {.buf = buf, .fd = fd, .hook = hook, .iovcnt = iovcnt, .is_iov = is_iov};
	__u32 *tv = traced_val(id >> 32);

	if (!tv || !learn_fd(id, fd, *tv))
		return;
	if (bpf_map_update_elem(&sys_stash, &id, &st, BPF_ANY))
		count_drop(JA4_DROP_STASH_FULL);
}

/*
 * readv: the first JA4_IOV_MAX iovecs, at most one chunk (JA4_CHUNK_MAX bytes)
 * of each; the rest is flagged truncated (positions stay exact). A raw TLS stream
 * stops at the first call that starts at or past raw_tls_bytes. Kept small:
 * the full chunk loop per iovec is too complex for the verifier.
 */
static __always_inline void handle_readv(void *ctx, __u8 hook, __s32 fd, const struct iovec *iov,
					 __u32 iovcnt, __u64 total)
{
	struct ja4_data_event *ev;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 budget = max_capture;
	__u64 base = 0, pos0, pv;

	struct conn_val *cv = conn_lookup(tgid, fd, JA4_STREAM_RAW);

	if (raw_skip(cv, total))
		return;
	ev = scratch_get(SCRATCH_TASK);
	if (!ev)
		return;
	if (fill_task_hdr(&ev->hdr, JA4_EV_DATA, hook, fd) > 0)
		return;
	syn_take(ev, cv == NULL);
	if (budget > JA4_CAPTURE_MAX)
		budget = JA4_CAPTURE_MAX;
	ev->hdr.total = total > 0xffffffffULL ? 0xffffffff : (__u32)total;
	pv = advance_pos(tgid, fd, JA4_STREAM_RAW, total, cv);
	pos0 = pv & JA4_POS_MASK;
	/* TLS detection as in handle_read: the first byte of the first iovec */
	if (pos0 == 0 && raw_tls_bytes != 0 && iovcnt > 0) {
		struct iovec v0;
		__u8 first = 0;

		if (!bpf_probe_read_user(&v0, sizeof(v0), &iov[0]) && v0.iov_len > 0 &&
		    !bpf_probe_read_user(&first, 1, v0.iov_base) && first == 0x16) {
			raw_flag(tgid, fd, JA4_POS_TLS, 0);
			port_tls(ev->hdr.dport);
			pv |= JA4_POS_TLS;
		}
	}
	/* All or nothing: a variable budget in the loop quadruples the verifier's work. */
	if (raw_tls_budget(pv, 1) == 0)
		return;
#pragma unroll
	for (int i = 0; i < JA4_IOV_MAX; i++) {
		struct iovec v;
		__u64 seg, n;

		if (i >= iovcnt || base >= total || budget == 0)
			break;
		if (bpf_probe_read_user(&v, sizeof(v), &iov[i])) {
			count_drop(JA4_DROP_READ_USER);
			break;
		}
		seg = v.iov_len;
		if (seg > total - base)
			seg = total - base;
		n = seg;
		if (n > budget)
			n = budget;
		if (n > JA4_CHUNK_MAX)
			n = JA4_CHUNK_MAX;
		asm volatile("" : "+r"(n));
		if (n == 0 || n > JA4_CHUNK_MAX)
			break;
		if (n < seg)
			ev->hdr.flags |= JA4_F_TRUNCATED;
		if (bpf_probe_read_user(ev->data, n, v.iov_base)) {
			count_drop(JA4_DROP_READ_USER);
			break;
		}
		ev->hdr.offset = base;
		ev->pos = pos0 + base;
		ev->hdr.data_len = n;
		if (base + seg >= total)
			ev->hdr.flags |= JA4_F_LAST_CHUNK;
		ja4_output(ctx, ev, offsetof(struct ja4_data_event, data) + n);
		ev->hdr.flags &= ~JA4_F_SYN; /* the first chunk carries it */
		base += seg;
		budget -= n;
	}
	if (base < total) {
		ev->hdr.flags |= JA4_F_TRUNCATED;
		count_drop(JA4_DROP_TRUNCATED);
	}
}

/* Reports the bytes of the syscall this thread stashed at entry. `iov` is a
 * compile-time constant: only readv programs carry the (large) readv body. */
static __always_inline void stash_exit(void *ctx, long ret, const bool iov)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sys_stash *p = bpf_map_lookup_elem(&sys_stash, &id);
	struct sys_stash st;

	if (!p)
		return;
	st = *p;
	bpf_map_delete_elem(&sys_stash, &id);
	if (ret <= 0)
		return;
	if (iov) {
		if (st.is_iov)
			handle_readv(ctx, st.hook, st.fd, (const struct iovec *)st.buf, st.iovcnt, ret);
	} else if (!st.is_iov) {
		handle_read(ctx, st.hook, st.fd, (const void *)st.buf, ret, JA4_STREAM_RAW);
	}
}

/* ---- recvfrom: syscall tracepoints (the default) ---- */

/* MSG_PEEK leaves the bytes in the socket: the next read returns them again.
 * nginx peeks 1 byte of every TLS connection (ngx_http_ssl_handshake): reporting
 * it would put a duplicate 0x16 at position 0 of the raw stream. */
#define JA4_MSG_PEEK 2

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int tp_sys_enter_recvfrom(struct syscall_trace_enter___ja4 *ctx)
{
	if (ctx->args[3] & JA4_MSG_PEEK)
		return 0;
	stash_enter(JA4_HOOK_TP_RECVFROM, (__s32)ctx->args[0], ctx->args[1], 0, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_sys_exit_recvfrom(struct syscall_trace_exit___ja4 *ctx)
{
	stash_exit(ctx, ctx->ret, false);
	return 0;
}

/* ---- exit only: the arguments from the task's saved user registers ---- */

/*
 * At a syscall's exit the registers user space entered with are still saved on the task's stack, so with
 * bpf_task_pt_regs (5.15+) the exit alone sees fd, buffer and flags: no entry program, no stash — half the
 * program runs, and no hash update and delete, per call. Kernels without the helper refuse these programs
 * at load; the plan then takes the entry/exit pairs above.
 */
static __always_inline struct pt_regs *ja4_user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* The body of the exit-only programs: `recvfrom` also skips MSG_PEEK calls (its flags are argument 4). */
static __always_inline void exit_regs(void *ctx, long ret, __u8 hook, const bool recvfrom)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 *tv = traced_val(id >> 32);
	struct pt_regs *regs;
	__s32 fd;

	if (!tv)
		return;
	/* A trusted BTF pointer: its fields are plain loads (CO-RE relocated), no probe-read helper call. */
	regs = ja4_user_regs();
	if (recvfrom && (PT_REGS_PARM4_SYSCALL(regs) & JA4_MSG_PEEK))
		return;
	fd = (__s32)PT_REGS_PARM1_SYSCALL(regs);
	if (!learn_fd(id, fd, *tv) || ret <= 0)
		return;
	handle_read(ctx, hook, fd, (const void *)PT_REGS_PARM2_SYSCALL(regs), ret, JA4_STREAM_RAW);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom_regs(struct syscall_trace_exit___ja4 *ctx)
{
	exit_regs(ctx, ctx->ret, JA4_HOOK_TP_RECVFROM, true);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int tp_exit_read_regs(struct syscall_trace_exit___ja4 *ctx)
{
	exit_regs(ctx, ctx->ret, JA4_HOOK_TP_READ, false);
	return 0;
}

/* ---- recvfrom: kprobes on the syscall wrapper (libbpf picks __x64_sys_recvfrom) ---- */

SEC("ksyscall/recvfrom")
int BPF_KSYSCALL(kprobe_recvfrom, int fd, void *buf, __u64 len, unsigned int flags)
{
	if (flags & JA4_MSG_PEEK)
		return 0;
	stash_enter(JA4_HOOK_KSYSCALL_RECVFROM, fd, (__u64)buf, 0, false);
	return 0;
}

SEC("kretsyscall/recvfrom")
int BPF_KRETPROBE(kretprobe_recvfrom, long ret)
{
	stash_exit(ctx, ret, false);
	return 0;
}

/* ---- recvfrom: fexit trampoline (no stash: arguments and return together) ---- */

SEC("fexit/__sys_recvfrom")
int BPF_PROG(fexit_recvfrom, int fd, void *ubuf, size_t size, unsigned int flags, struct sockaddr *addr,
	     int *addr_len, int ret)
{
	if (ret <= 0 || (flags & JA4_MSG_PEEK) || !is_traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	handle_read(ctx, JA4_HOOK_FEXIT_RECVFROM, fd, ubuf, ret, JA4_STREAM_RAW);
	return 0;
}

/* ---- raw_tp / tp_btf on sys_enter/sys_exit: every syscall, filtered by nr first ---- */

static __always_inline bool raw_nr_wanted(long nr)
{
	if (nr == nr_recvfrom)
		return true;
	return raw_tp_reads && nr == nr_read;
}

static __always_inline void raw_enter(__u8 hook, struct pt_regs *regs, long nr)
{
	__s32 fd = (__s32)PT_REGS_PARM1_CORE_SYSCALL(regs);
	__u64 buf = PT_REGS_PARM2_CORE_SYSCALL(regs);

	if (nr == nr_recvfrom && (PT_REGS_PARM4_CORE_SYSCALL(regs) & JA4_MSG_PEEK))
		return;
	stash_enter(hook, fd, buf, 0, false);
}

SEC("raw_tp/sys_enter")
int raw_tp_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	long nr = (long)ctx->args[1];

	if (!raw_nr_wanted(nr))
		return 0;
	raw_enter(JA4_HOOK_RAW_TP, (struct pt_regs *)ctx->args[0], nr);
	return 0;
}

SEC("raw_tp/sys_exit")
int raw_tp_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	if (!raw_nr_wanted(ja4_regs_syscall_nr((struct pt_regs *)ctx->args[0])))
		return 0;
	stash_exit(ctx, (long)ctx->args[1], false);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(tp_btf_sys_enter, struct pt_regs *regs, long id)
{
	if (!raw_nr_wanted(id))
		return 0;
	raw_enter(JA4_HOOK_TP_BTF, regs, id);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tp_btf_sys_exit, struct pt_regs *regs, long ret)
{
	if (!raw_nr_wanted(ja4_regs_syscall_nr(regs)))
		return 0;
	stash_exit(ctx, ret, false);
	return 0;
}

/* ---- read / readv tracepoints: Apache without uprobes, nginx with TLS ---- */

SEC("tracepoint/syscalls/sys_enter_read")
int tp_enter_read(struct syscall_trace_enter___ja4 *ctx)
{
	stash_enter(JA4_HOOK_TP_READ, (__s32)ctx->args[0], ctx->args[1], 0, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int tp_exit_read(struct syscall_trace_exit___ja4 *ctx)
{
	stash_exit(ctx, ctx->ret, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_readv")
int tp_enter_readv(struct syscall_trace_enter___ja4 *ctx)
{
	stash_enter(JA4_HOOK_TP_READV, (__s32)ctx->args[0], ctx->args[1], (__u32)ctx->args[2], true);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int tp_exit_readv(struct syscall_trace_exit___ja4 *ctx)
{
	stash_exit(ctx, ctx->ret, true);
	return 0;
}

/* ---- close: end of a connection's streams ---- */

SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct syscall_trace_enter___ja4 *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__s32 fd = (__s32)ctx->args[0];
	struct ja4_conn_key kr = {.tgid = tgid, .fd = fd, .stream = JA4_STREAM_RAW};
	struct ja4_conn_key kp = {.tgid = tgid, .fd = fd, .stream = JA4_STREAM_PLAINTEXT};
	struct ja4_close_event *ev;
	struct conn_val *p;
	__u64 pos_raw = 0, pos_pt = 0;
	bool raw, pt;

	if (!is_traced(tgid))
		return 0;
	p = bpf_map_lookup_elem(&conn_pos, &kr);
	raw = p != NULL;
	if (p)
		pos_raw = p->pos & JA4_POS_MASK; /* flags off */
	p = bpf_map_lookup_elem(&conn_pos, &kp);
	pt = p != NULL;
	if (p)
		pos_pt = p->pos;
	if (!raw && !pt)
		return 0; /* never read from: not a connection we reported */
	ev = scratch_get(SCRATCH_TASK);
	if (!ev)
		return 0;
	fill_task_hdr(&ev->hdr, JA4_EV_CLOSE, JA4_HOOK_TP_CLOSE, fd);
	ev->pos_raw = pos_raw;
	ev->pos_plaintext = pos_pt;
	/* only what is there: a plain connection has no plaintext stream, and a delete that finds nothing
	 * still hashes the key and walks the bucket under its lock */
	if (raw)
		bpf_map_delete_elem(&conn_pos, &kr);
	if (pt)
		bpf_map_delete_elem(&conn_pos, &kp);
	ja4_output(ctx, ev, sizeof(*ev));
	return 0;
}

/* ---- listen: a traced server's new listening port reaches tc before its first client ---- */

/*
 * The agent's /proc scan finds a new server's ports up to a scan later (a second or more); tc reports the SYNs
 * and ClientHellos of listen_ports only, so the first connections of a server started after the agent would
 * have no JA4T or JA4. At listen() the socket is bound: its local port goes in here. Ports a server stops
 * listening on are removed by user space's scan.
 */
SEC("tracepoint/syscalls/sys_enter_listen")
int tp_enter_listen(struct syscall_trace_enter___ja4 *ctx)
{
	struct ja4_event_hdr h;
	__u8 one = 1;
	__u32 port;
	int r;

	if (!follow_listen || !is_traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	r = fd_tuple((__s32)ctx->args[0], &h);
	if (r < 0)
		count_drop(JA4_DROP_READ_KERNEL);
	if (r != 0 || !h.dport)
		return 0;
	port = h.dport;
	bpf_map_update_elem(&listen_ports, &port, &one, BPF_ANY);
	return 0;
}
