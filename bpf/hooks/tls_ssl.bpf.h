/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * OpenSSL plaintext: int SSL_read(SSL *, void *buf, int num),
 * int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes),
 * int SSL_do_handshake(SSL *) (only to learn the fd early).
 * The fd of an SSL * is learned from the read()/recvfrom() the call makes on
 * the same thread (stash_enter), and remembered in ssl_fds for calls served
 * from OpenSSL's buffer. Needs the read (or recvfrom) entry hook attached.
 */

static __always_inline void ssl_enter(__u8 hook, __u64 ssl, __u64 buf, __u64 readbytes)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct ssl_stash st = {.ssl = ssl, .buf = buf, .readbytes = readbytes, .fd = -1, .hook = hook};
	struct ssl_key k = {.ssl = ssl, .tgid = tgid};
	__s32 *fdp;

	if (!is_traced(tgid))
		return;
	fdp = bpf_map_lookup_elem(&ssl_fds, &k);
	if (fdp)
		st.fd = *fdp;
	if (bpf_map_update_elem(&ssl_stash, &id, &st, BPF_ANY))
		count_drop(JA4_DROP_STASH_FULL);
}

static __always_inline void ssl_exit(void *ctx, int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ssl_stash *p = bpf_map_lookup_elem(&ssl_stash, &id);
	struct ssl_stash st;
	__u64 n = 0;

	if (!p) {
		if (is_traced(id >> 32))
			count_drop(JA4_DROP_NO_STASH);
		return;
	}
	st = *p;
	bpf_map_delete_elem(&ssl_stash, &id);
	if (!st.buf || ret <= 0)
		return; /* handshake, or nothing read */
	if (st.readbytes) {
		if (bpf_probe_read_user(&n, sizeof(n), (void *)st.readbytes)) {
			count_drop(JA4_DROP_READ_USER);
			return;
		}
	} else {
		n = ret;
	}
	if (n == 0)
		return;
	if (st.fd < 0) {
		count_drop(JA4_DROP_SSL_NO_FD);
		return;
	}
	handle_read(ctx, st.hook, st.fd, (const void *)st.buf, n, JA4_STREAM_PLAINTEXT);
}

SEC("uprobe")
int BPF_KPROBE(up_ssl_read, void *ssl, void *buf, int num)
{
	ssl_enter(JA4_HOOK_SSL_READ, (__u64)ssl, (__u64)buf, 0);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uret_ssl_read, int ret)
{
	ssl_exit(ctx, ret);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(up_ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	ssl_enter(JA4_HOOK_SSL_READ_EX, (__u64)ssl, (__u64)buf, (__u64)readbytes);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uret_ssl_read_ex, int ret)
{
	ssl_exit(ctx, ret);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(up_ssl_hshake, void *ssl)
{
	ssl_enter(JA4_HOOK_SSL_READ, (__u64)ssl, 0, 0);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uret_ssl_hshake, int ret)
{
	ssl_exit(ctx, ret);
	return 0;
}
