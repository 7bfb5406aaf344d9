/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * OpenSSL plaintext: int SSL_read(SSL *, void *buf, int num),
 * int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes),
 * int SSL_do_handshake(SSL *) (only to learn the fd early).
 * The fd of an SSL * is learned from the read()/recvfrom() the call makes on
 * the same thread (stash_enter), and remembered in ssl_fds for calls served
 * from OpenSSL's buffer. Needs the read (or recvfrom) entry hook attached.
 *
 * Where these run is chosen in user space (src/capture/tls_sites.ts): on the
 * server's own file where it can (nginx's exported ngx_ssl_recv, or the PLT
 * stubs through which nginx/mod_ssl.so call SSL_read), so that only server
 * processes trap; on libssl itself as the fallback, where every process that
 * maps libssl traps on every call.
 */

/* Offset of `ngx_socket_t fd` in nginx's ngx_connection_t (data, read, write, fd). */
const volatile __u32 ngx_conn_fd_off = 24;

/* tgid -> probe hits (entry and return programs of this file): the traps a
 * process pays, so traps per request and bystanders' hits can be measured. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} ssl_hits SEC(".maps");

static __always_inline void count_hit(__u32 tgid)
{
	__u64 one = 1, *c = bpf_map_lookup_elem(&ssl_hits, &tgid);

	if (c)
		__sync_fetch_and_add(c, 1);
	else
		bpf_map_update_elem(&ssl_hits, &tgid, &one, BPF_NOEXIST);
}

static __always_inline void ssl_enter(__u8 hook, __u64 ssl, __u64 buf, __u64 readbytes)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct ssl_stash st = {.ssl = ssl, .buf = buf, .readbytes = readbytes, .fd = -1, .hook = hook};
	struct ssl_key k = {.ssl = ssl, .tgid = tgid};
	struct ssl_stash *prev;
	__u32 *tv;
	__s32 *fdp;

	count_hit(tgid);
	tv = traced_val(tgid);
	if (!tv)
		return;
	prev = bpf_map_lookup_elem(&ssl_stash, &id);
	if (prev && prev->outer)
		return; /* inside ngx_ssl_recv, which reports the bytes */
	traced_mark(tv, JA4_TRACED_SSL_SHIFT); /* before this call's read: it learns the fd */
	fdp = bpf_map_lookup_elem(&ssl_fds, &k);
	if (fdp)
		st.fd = *fdp;
	if (bpf_map_update_elem(&ssl_stash, &id, &st, BPF_ANY))
		count_drop(JA4_DROP_STASH_FULL);
}

static __always_inline void ssl_exit(void *ctx, int ret, bool outer)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ssl_stash *p = bpf_map_lookup_elem(&ssl_stash, &id);
	struct ssl_stash st;
	__u64 n = 0;

	count_hit(id >> 32);
	if (!p) {
		if (is_traced(id >> 32))
			count_drop(JA4_DROP_NO_STASH);
		return;
	}
	if (p->outer && !outer)
		return; /* an SSL_* return inside ngx_ssl_recv */
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
	ssl_exit(ctx, ret, false);
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
	ssl_exit(ctx, ret, false);
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
	ssl_exit(ctx, ret, false);
	return 0;
}

/* nginx: ssize_t ngx_ssl_recv(ngx_connection_t *c, u_char *buf, size_t size),
 * exported by builds linked for dynamic modules. One call per read event
 * (it loops SSL_read until WANT_READ), so one entry + return per request read
 * instead of two SSL_read pairs; the fd comes from the connection itself.
 * Returns the bytes read, or NGX_AGAIN/NGX_ERROR (< 0), or 0 at EOF. */
SEC("uprobe")
int BPF_KPROBE(up_ngx_ssl_recv, void *c, void *buf, __u64 size)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct ssl_stash st = {.ssl = (__u64)c, .buf = (__u64)buf, .fd = -1, .hook = JA4_HOOK_SSL_READ,
				.outer = 1};

	count_hit(tgid);
	if (!is_traced(tgid))
		return 0;
	if (bpf_probe_read_user(&st.fd, sizeof(st.fd), (char *)c + ngx_conn_fd_off)) {
		count_drop(JA4_DROP_READ_USER);
		st.fd = -1;
	}
	if (bpf_map_update_elem(&ssl_stash, &id, &st, BPF_ANY))
		count_drop(JA4_DROP_STASH_FULL);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uret_ngx_ssl_recv, long ret)
{
	ssl_exit(ctx, ret > 0x7fffffff ? 0x7fffffff : (int)ret, true);
	return 0;
}
