/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Apache: apr_status_t apr_socket_recv(apr_socket_t *sock, char *buf, apr_size_t *len)
 * in libapr-1.so.0. The fd is read from apr_socket_t at apr_socketdes_off
 * (APR-internal layout: pool pointer, then int socketdes).
 */

SEC("uprobe")
int BPF_KPROBE(uprobe_apr_socket_recv_entry, void *sock, char *buf, __u64 *lenp)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct apr_stash st = {.sock = (__u64)sock, .buf = (__u64)buf, .lenp = (__u64)lenp};
	struct ssl_stash *ss;
	__u32 *tv = traced_val(id >> 32);

	if (!tv)
		return 0;
	traced_mark(tv, JA4_TRACED_APR_SHIFT); /* before this call's read: the syscall hooks leave it to us */
	/* mod_ssl: SSL_read reads through this call; learn the SSL *'s fd here too,
	 * so the plaintext works without the read tracepoints. */
	ss = bpf_map_lookup_elem(&ssl_stash, &id);
	if (ss) {
		__s32 fd = -1;
		struct ssl_key k = {.ssl = ss->ssl, .tgid = id >> 32};

		if (!bpf_probe_read_user(&fd, sizeof(fd), (char *)sock + apr_socketdes_off) && fd >= 0) {
			ss->fd = fd;
			bpf_map_update_elem(&ssl_fds, &k, &fd, BPF_ANY);
		}
	}
	if (bpf_map_update_elem(&apr_stash, &id, &st, BPF_ANY))
		count_drop(JA4_DROP_STASH_FULL);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uretprobe_apr_socket_recv, int status)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct apr_stash *p = bpf_map_lookup_elem(&apr_stash, &id);
	struct apr_stash st;
	__u64 len = 0;
	__s32 fd = -1;

	if (!p) {
		if (is_traced(id >> 32))
			count_drop(JA4_DROP_NO_STASH);
		return 0;
	}
	st = *p;
	bpf_map_delete_elem(&apr_stash, &id);
	/* APR sets *len to the bytes read (0 with EOF/EAGAIN), whatever the status. */
	if (bpf_probe_read_user(&len, sizeof(len), (void *)st.lenp)) {
		count_drop(JA4_DROP_READ_USER);
		return 0;
	}
	if (len == 0)
		return 0;
	if (bpf_probe_read_user(&fd, sizeof(fd), (char *)st.sock + apr_socketdes_off)) {
		count_drop(JA4_DROP_READ_USER);
		return 0;
	}
	handle_read(ctx, JA4_HOOK_APR_RECV, fd, (const void *)st.buf, len, JA4_STREAM_RAW);
	return 0;
}
