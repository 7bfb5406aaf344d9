/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Config variables, maps and the helpers every hook shares. */
#ifndef JA4_COMMON_BPF_H
#define JA4_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "ja4ebpf.h"
#include "core_fixes.bpf.h"

#define JA4_S_IFMT 0170000
#define JA4_S_IFSOCK 0140000
#define JA4_SOCK_STREAM 1
#define JA4_TC_ACT_UNSPEC -1 /* continue with the next filter; the packet passes if none */
#define JA4_ETH_P_IP 0x0800
#define JA4_ETH_P_IPV6 0x86DD
#define JA4_IPPROTO_TCP 6

/* ---- config (.rodata): set by user space between open and load ---- */

/* The agent's own tgid: never traced. */
const volatile __u32 self_tgid = 0;
/* true: events go to the `events` ring buffer; false: to `events_perf`. */
const volatile bool use_ringbuf = true;
/* true when bpf_get_current_task_btf() exists (>= 5.11). */
const volatile bool has_task_btf = true;
/* Syscall numbers for raw_tp/tp_btf filtering (x86-64 defaults). */
const volatile __u32 nr_recvfrom = 45;
const volatile __u32 nr_read = 0;
/* true: raw_tp/tp_btf programs also capture read() (not only recvfrom). */
const volatile bool raw_tp_reads = false;
/* Offset of `int socketdes` in APR's apr_socket_t (pool pointer first). */
const volatile __u32 apr_socketdes_off = 8;
/* Bytes copied per call, at most JA4_CAPTURE_MAX. */
const volatile __u32 max_capture = JA4_CAPTURE_MAX;
/* Client->server bytes copied per new connection by tc, at most JA4_PKT_MAX. */
const volatile __u32 tc_capture_bytes = JA4_PKT_MAX;
/* Server kinds the exec follower adds: bit (1 << enum ja4_server_kind). Default nginx and Apache. */
const volatile __u32 follow_servers = (1u << JA4_SERVER_NGINX) | (1u << JA4_SERVER_APACHE);
/* true: a traced server's listen() puts its port into listen_ports at once (false: capture.ports is fixed). */
const volatile bool follow_listen = true;
/* Raw-stream bytes copied of a TLS connection (first byte 0x16): the ClientHello is all user
 * space reads of it (a post-quantum one is ~1.9 KB). 0 = no limit. */
const volatile __u32 raw_tls_bytes = 8192;

/* ---- maps ---- */

/* Ring buffer; user space sets max_entries (power of two, page multiple) before load,
 * or autocreate=false where the kernel has no ring buffers. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Perf buffer fallback: same event bytes. max_entries 0 = number of CPUs (libbpf). */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events_perf SEC(".maps");

union ja4_scratch_u {
	struct ja4_data_event data;
	struct ja4_pkt_event pkt;
	struct ja4_close_event close;
};

/* Events are built here and sent with *_output (variable length: only the bytes read).
 * Slot 0: syscall tracepoint programs (run with preemption off); slot 1: tc (softirq may
 * interrupt slot 0's user); slot 2: uprobe programs, which run preemptible (migrate_disable
 * only): another task's uprobe program on the same CPU may reuse the slot meanwhile, which
 * emit_chunks detects (tid changed) and counts as JA4_DROP_SCRATCH. */
enum { SCRATCH_TASK = 0, SCRATCH_TC = 1, SCRATCH_UPROBE = 2 };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, union ja4_scratch_u);
} scratch SEC(".maps");

/* Per-CPU counters indexed by enum ja4_drop_reason: user space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JA4_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Per-CPU counters indexed by enum ja4_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JA4_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* tgid -> enum ja4_server_kind: filled by user space, kept current by the follow programs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
} traced_pids SEC(".maps");

/* Server TCP ports that tc watches: index = port (host byte order), value enum ja4_port_state. An array, not a
 * hash: tc looks up the destination port of every packet with a payload, and the verifier inlines an
 * array lookup (no helper call, no hash). One element per port, so no writer read-modify-writes a word
 * another port shares. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} listen_ports SEC(".maps");

/* Entry -> exit state of a syscall (recvfrom/read/readv), keyed by pid_tgid. */
struct sys_stash {
	__u64 buf;   /* buffer, or struct iovec * for readv */
	__s32 fd;
	__u32 hook;  /* enum ja4_hook */
	__u32 iovcnt;
	__u32 is_iov; /* readv: buf is a struct iovec array */
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sys_stash);
} sys_stash SEC(".maps");

/* Entry -> return state of apr_socket_recv, keyed by pid_tgid. */
struct apr_stash {
	__u64 sock;
	__u64 buf;
	__u64 lenp;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct apr_stash);
} apr_stash SEC(".maps");

/* Entry -> return state of SSL_read/SSL_read_ex/SSL_do_handshake, keyed by pid_tgid.
 * fd is learned from a read()/recvfrom() entered on the same thread meanwhile. */
struct ssl_stash {
	__u64 ssl;
	__u64 buf;
	__u64 readbytes; /* size_t * of SSL_read_ex, 0 otherwise */
	__s32 fd;        /* -1 until learned */
	__u32 hook;
	__u32 outer;     /* set by ngx_ssl_recv: SSL_* probes inside it (a libssl fallback for another
			  * server) leave it to the outer probe */
	__u32 _pad0;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ssl_stash);
} ssl_stash SEC(".maps");

/* (tgid, SSL *) -> fd, remembered for calls served from OpenSSL's buffer. */
struct ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad0;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, __s32);
} ssl_fds SEC(".maps");

/* (tgid, fd, stream) -> bytes read so far: the `pos` of the next event, in the low 62 bits.
 * Raw streams carry flags in the top bits (JA4_POS_*): mask with JA4_POS_MASK.
 * The 4-tuple is not kept here: an fd reused without a close() this program saw (close_range, dup2,
 * a kernel without the close hook) would carry the old connection's address onto the new one's rows;
 * walked from the fd on every read, the tuple is always the socket's own. */
struct conn_val {
	__u64 pos;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ja4_conn_key);
	__type(value, struct conn_val);
} conn_pos SEC(".maps");

/*
 * Client SYNs tc saw, until the server's first read of the connection takes them into its event (the
 * facts ride on the first chunk, JA4_F_SYN): no ring record per connection for them, and they are there
 * at the first request whatever order the ring delivers in. SYNs nobody reads after (scanners, health
 * checks, SYN floods) age out of the LRU and never reach user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct ja4_flow_key);
	__type(value, struct ja4_syn_facts);
} syn_facts SEC(".maps");

/* Puts the enums into the object's BTF for scripts/gen-layout.ts; never read. */
struct ja4_btf_enums {
	enum ja4_event_kind kind;
	enum ja4_hook hook;
	enum ja4_event_flags flags;
	enum ja4_server_kind server;
	enum ja4_stream stream;
	enum ja4_drop_reason drop;
	enum ja4_stat stat;
	enum ja4_port_state port;
	enum ja4_limits limits;
	enum ja4_family family;
	enum ja4_traced_bits traced;
};
struct ja4_btf_enums *ja4_btf_anchor __attribute__((unused));

/* ---- helpers ---- */

static __always_inline void count_drop(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&drops, &reason);
	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline void count_stat(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &stat);
	if (c)
		*c += 1;
}

/* Sends `size` bytes of `ev`; size must be verifier-bounded by the caller. */
static __always_inline int ja4_output(void *ctx, void *ev, __u64 size)
{
	long err;
	if (use_ringbuf) {
		/* Wake the reader when this record crosses a sixteenth of the ring, not per record: a wake-up is
		 * an irq_work and a self-IPI in the web server's system call (a third of this program's time in
		 * a VM when every record past the mark woke), and under load the reader drains on its own timer,
		 * not in poll(2), so those wake-ups woke nobody. Once per sixteenth is what an idle reader needs
		 * (a burst); a trickle below the mark waits for its poll timeout. Producers on two CPUs racing
		 * past a mark may both wake, or neither: the next mark, or the reader's timer, covers it. */
		__u64 step = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 16;
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		__u64 flags = BPF_RB_NO_WAKEUP;

		if (step && avail / step != (avail + size + 8) / step)
			flags = BPF_RB_FORCE_WAKEUP;
		err = bpf_ringbuf_output(&events, ev, size, flags);
		if (err)
			count_drop(JA4_DROP_RINGBUF);
		else if (flags == BPF_RB_FORCE_WAKEUP)
			count_stat(JA4_STAT_RING_WAKEUP);
	} else {
		err = bpf_perf_event_output(ctx, &events_perf, BPF_F_CURRENT_CPU, ev, size);
		if (err)
			count_drop(JA4_DROP_PERFBUF);
	}
	if (err) {
		const struct ja4_event_hdr *h = ev;
		/* The first chunk of a read carries the start of its request(s): count it in the unit that
		 * rows go missing in, so rows + lost reads = requests when the ring overflows. */
		if (h->kind == JA4_EV_DATA && h->offset == 0)
			count_drop(JA4_DROP_LOST_READ);
	}
	return err ? -1 : 0;
}

static __always_inline void *scratch_get(__u32 slot)
{
	void *p = bpf_map_lookup_elem(&scratch, &slot);
	if (!p)
		count_drop(JA4_DROP_SCRATCH);
	return p;
}

/* This tgid's traced_pids value (enum ja4_traced_bits), NULL when the agent does not trace it. */
static __always_inline __u32 *traced_val(__u32 tgid)
{
	if (tgid == self_tgid)
		return NULL;
	return bpf_map_lookup_elem(&traced_pids, &tgid);
}

/* Whether this tgid is one the agent traces. */
static __always_inline bool is_traced(__u32 tgid)
{
	return traced_val(tgid) != NULL;
}

#define JA4_TRACED_COUNTER(v, shift) (((v) >> (shift)) & ((1u << JA4_TRACED_COUNTER_BITS) - 1))

/* Raises the counter at `shift` of a traced_pids value from zero. An add on a zero field (no atomic OR
 * before 5.12): threads racing here add more than one, which stays non-zero within the 12 bits. */
static __always_inline void traced_mark(__u32 *v, __u32 shift)
{
	if (!JA4_TRACED_COUNTER(*v, shift))
		__sync_fetch_and_add(v, 1u << shift);
}

static __always_inline struct task_struct *ja4_current_task(void)
{
	if (has_task_btf)
		return bpf_get_current_task_btf();
	return (struct task_struct *)bpf_get_current_task();
}

/* Widest span of one kernel object read with one helper call (see read_span). */
#define JA4_SPAN 48

/*
 * Reads bytes [lo, hi) of kernel object `obj` into `dst` (JA4_SPAN bytes) with one helper call, so two or
 * more nearby fields cost one probe read instead of one each. lo and hi are CO-RE field offsets: the
 * verifier sees constants and keeps one branch. Returns 0, -1 on a fault, 1 when the fields lie further
 * apart than JA4_SPAN on this kernel (the caller then reads them one by one).
 */
static __always_inline int read_span(void *dst, const void *obj, __u32 lo, __u32 hi)
{
	__u32 n = hi - lo;

	if (hi <= lo || n > JA4_SPAN)
		return 1;
	return bpf_probe_read_kernel(dst, n, (const char *)obj + lo) ? -1 : 0;
}

/* Little helpers for read_span's buffer: the offsets are constants the compiler cannot see, so the
 * copies stay byte-wise (the verifier refuses misaligned stack loads). */
static __always_inline __u64 span_u64(const __u8 *b, __u32 off)
{
	__u64 v;

	__builtin_memcpy(&v, b + off, sizeof(v));
	return v;
}

static __always_inline __u32 span_u32(const __u8 *b, __u32 off)
{
	__u32 v;

	__builtin_memcpy(&v, b + off, sizeof(v));
	return v;
}

static __always_inline __u16 span_u16(const __u8 *b, __u32 off)
{
	__u16 v;

	__builtin_memcpy(&v, b + off, sizeof(v));
	return v;
}

#define JA4_OFF(type, field) ((__u32)bpf_core_field_offset(type, field))
#define JA4_END(type, field) (JA4_OFF(type, field) + (__u32)bpf_core_field_size(type, field))

/*
 * fd -> 4-tuple. Returns 0 and fills family/addresses/ports for a TCP socket
 * (IPv4 or IPv6), 1 when fd is not a TCP socket, -1 on a read failure.
 * Orientation: saddr/sport = peer (client), daddr/dport = local (server).
 *
 * Runs on every captured read, inside the server's system call: the walk task -> files -> fdtable is
 * plain loads through the task's BTF pointer where the kernel has one (no helper call), and nearby
 * fields are read together (read_span): file's private_data + f_inode, socket's type + sk, and
 * sock_common's addresses, ports and family. Six probe reads per IPv4 read instead of fifteen.
 */
static __always_inline int fd_tuple(__s32 fd, struct ja4_event_hdr *h)
{
	struct file **fds;
	struct file *f = NULL;
	struct inode *inode = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;
	unsigned int max_fds;
	umode_t mode;
	__u16 family, type = 0;
	__u8 b[JA4_SPAN];
	__u32 lo;
	int r;

	if (fd < 0)
		return 1;
	if (has_task_btf) {
		struct files_struct *files = bpf_get_current_task_btf()->files;
		struct fdtable *fdt;

		if (!files)
			return -1;
		fdt = files->fdt;
		max_fds = fdt->max_fds;
		fds = fdt->fd;
	} else {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct files_struct *files = BPF_CORE_READ(task, files);
		struct fdtable *fdt;

		if (!files)
			return -1;
		fdt = BPF_CORE_READ(files, fdt);
		max_fds = BPF_CORE_READ(fdt, max_fds);
		fds = BPF_CORE_READ(fdt, fd);
	}
	if ((unsigned int)fd >= max_fds)
		return 1;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return -1;

	/* struct file: f_inode and private_data (adjacent since 6.12, far apart before) */
	if (JA4_OFF(struct file, private_data) < JA4_OFF(struct file, f_inode)) {
		lo = JA4_OFF(struct file, private_data);
		r = read_span(b, f, lo, JA4_END(struct file, f_inode));
	} else {
		lo = JA4_OFF(struct file, f_inode);
		r = read_span(b, f, lo, JA4_END(struct file, private_data));
	}
	if (r < 0)
		return -1;
	if (r == 0) {
		inode = (struct inode *)span_u64(b, JA4_OFF(struct file, f_inode) - lo);
		sock = (struct socket *)span_u64(b, JA4_OFF(struct file, private_data) - lo);
	} else {
		inode = BPF_CORE_READ(f, f_inode);
		sock = BPF_CORE_READ(f, private_data);
	}
	mode = BPF_CORE_READ(inode, i_mode);
	if ((mode & JA4_S_IFMT) != JA4_S_IFSOCK)
		return 1;
	if (!sock)
		return -1;

	/* struct socket: type (SOCK_STREAM) and sk */
	lo = JA4_OFF(struct socket, type);
	r = read_span(b, sock, lo, JA4_END(struct socket, sk));
	if (r < 0)
		return -1;
	if (r == 0) {
		type = span_u16(b, 0);
		sk = (struct sock *)span_u64(b, JA4_OFF(struct socket, sk) - lo);
	} else {
		type = BPF_CORE_READ(sock, type);
		sk = BPF_CORE_READ(sock, sk);
	}
	if (!sk)
		return -1;
	if (type != JA4_SOCK_STREAM)
		return 1;

	/* struct sock_common: peer and local IPv4 address, ports, family in one read */
	lo = JA4_OFF(struct sock_common, skc_daddr);
	r = read_span(b, sk, lo, JA4_END(struct sock_common, skc_family));
	if (r < 0)
		return -1;
	if (r == 0) {
		family = span_u16(b, JA4_OFF(struct sock_common, skc_family) - lo);
		h->sport = bpf_ntohs(span_u16(b, JA4_OFF(struct sock_common, skc_dport) - lo));
		h->dport = span_u16(b, JA4_OFF(struct sock_common, skc_num) - lo);
	} else {
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		h->sport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		h->dport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	if (family == JA4_AF_INET) {
		__u32 peer, local;

		if (r == 0) {
			peer = span_u32(b, JA4_OFF(struct sock_common, skc_daddr) - lo);
			local = span_u32(b, JA4_OFF(struct sock_common, skc_rcv_saddr) - lo);
		} else {
			peer = BPF_CORE_READ(sk, __sk_common.skc_daddr);
			local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		}
		__builtin_memset(h->saddr, 0, sizeof(h->saddr));
		__builtin_memset(h->daddr, 0, sizeof(h->daddr));
		__builtin_memcpy(h->saddr, &peer, 4);
		__builtin_memcpy(h->daddr, &local, 4);
	} else if (family == JA4_AF_INET6) {
		/* Both addresses whole (16 bytes each): peer then local, adjacent in sock_common. */
		lo = JA4_OFF(struct sock_common, skc_v6_daddr);
		if (read_span(b, sk, lo, JA4_END(struct sock_common, skc_v6_rcv_saddr)) == 0) {
			__builtin_memcpy(h->saddr, b, 16);
			__builtin_memcpy(h->daddr, b + (JA4_OFF(struct sock_common, skc_v6_rcv_saddr) - lo), 16);
		} else if (bpf_core_read(&h->saddr, sizeof(h->saddr), &sk->__sk_common.skc_v6_daddr) ||
			   bpf_core_read(&h->daddr, sizeof(h->daddr), &sk->__sk_common.skc_v6_rcv_saddr)) {
			return -1;
		}
	} else {
		h->sport = 0;
		h->dport = 0;
		return 1;
	}
	h->family = (__u8)family;
	/* A socket gone to TCP_CLOSE (peer's RST, or at close()) has skc_num zeroed by
	 * inet_put_port; inet_sport keeps the local port. */
	if (!h->dport)
		h->dport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	return 0;
}

/* Fills the task part of the header; returns fd_tuple()'s result. */
static __always_inline int fill_task_hdr(struct ja4_event_hdr *h, __u8 kind, __u8 hook, __s32 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	int r;

	h->kind = kind;
	h->hook = hook;
	h->flags = 0;
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->fd = fd;
	h->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	h->family = 0;
	h->sport = 0;
	h->dport = 0;
	h->data_len = 0;
	h->total = 0;
	h->offset = 0;
	r = fd_tuple(fd, h);
	if (r < 0) {
		count_drop(JA4_DROP_READ_KERNEL);
		__builtin_memset(h->saddr, 0, sizeof(h->saddr));
		__builtin_memset(h->daddr, 0, sizeof(h->daddr));
		h->family = 0;
		h->flags |= JA4_F_NO_TUPLE;
	}
	return r;
}

/* ::ffff:0:0/96 */
static __always_inline bool v4_mapped(const __u8 *a)
{
	__u64 hi;
	__u32 mid;

	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return hi == 0 && mid == bpf_htonl(0xffff);
}

/*
 * The first read of a stream (`first`: no conn_pos entry yet) takes its connection's client SYN from
 * syn_facts into the event (JA4_F_SYN); every other event has the field zeroed.
 */
static __always_inline void syn_take(struct ja4_data_event *ev, bool first)
{
	struct ja4_syn_facts *f;
	struct ja4_flow_key k;

	__builtin_memset(&ev->syn, 0, sizeof(ev->syn));
	if (!first || ev->hdr.family == 0)
		return;
	k.family = ev->hdr.family;
	k._pad0 = 0;
	k.sport = ev->hdr.sport;
	k.dport = ev->hdr.dport;
	k._pad1 = 0;
	__builtin_memcpy(k.saddr, ev->hdr.saddr, 16);
	__builtin_memcpy(k.daddr, ev->hdr.daddr, 16);
	if (k.family == JA4_AF_INET6 && v4_mapped(k.saddr) && v4_mapped(k.daddr)) {
		/* a dual-stack socket's IPv4 client (::ffff:a.b.c.d): tc keyed its SYN as the IPv4 packet it was */
		k.family = JA4_AF_INET;
		__builtin_memcpy(k.saddr, k.saddr + 12, 4);
		__builtin_memcpy(k.daddr, k.daddr + 12, 4);
		__builtin_memset(k.saddr + 4, 0, 12);
		__builtin_memset(k.daddr + 4, 0, 12);
	}
	f = bpf_map_lookup_elem(&syn_facts, &k);
	if (!f)
		return;
	__builtin_memcpy(&ev->syn, f, sizeof(ev->syn));
	bpf_map_delete_elem(&syn_facts, &k);
	ev->hdr.flags |= JA4_F_SYN;
}

/* conn_pos value flags (raw stream only). Set by adding the bit once (atomic OR needs 5.12; an
 * add on a clear bit is the same, and BPF_XADD loads everywhere). */
#define JA4_POS_TLS (1ULL << 63)  /* first byte at position 0 was 0x16: a TLS stream */
#define JA4_POS_DONE (1ULL << 62) /* TLS stream whose plaintext has begun: handshake read */
#define JA4_POS_MASK (JA4_POS_DONE - 1)

/* Reserves `n` stream bytes on (tgid, fd, stream), whose value `cv` is (NULL: not seen yet), with one
 * map lookup per read (the caller's); returns the value before them: the position (JA4_POS_MASK) and the
 * flags. */
static __always_inline __u64 advance_pos(__u32 tgid, __s32 fd, __u32 stream, __u64 n, struct conn_val *cv)
{
	if (cv) {
		__u64 pos = cv->pos;
		__sync_fetch_and_add(&cv->pos, n);
		return pos;
	}
	struct ja4_conn_key k = {.tgid = tgid, .fd = fd, .stream = stream};
	struct conn_val v = {.pos = n};
	bpf_map_update_elem(&conn_pos, &k, &v, BPF_ANY);
	return 0;
}

/*
 * Copies up to `len` bytes at user `buf` as JA4_EV_DATA chunks. `ev->hdr` is
 * filled (kind/hook/task/tuple/total); `base` is the offset of buf within the
 * call's bytes (readv), `budget` how many bytes may still be copied for the call.
 * Returns the bytes copied.
 */
static __always_inline __u32 emit_chunks(void *ctx, struct ja4_data_event *ev, __u64 pos0,
					 const void *buf, __u64 len, __u32 base, __u32 budget)
{
	__u32 copied = 0;
	__u64 cap = len < budget ? len : budget;

#pragma unroll
	for (int i = 0; i < JA4_CHUNKS_MAX; i++) {
		__u32 off = i * JA4_CHUNK_MAX;
		__u64 n;

		if (off >= cap)
			break;
		n = cap - off;
		if (n > JA4_CHUNK_MAX)
			n = JA4_CHUNK_MAX;
		/* keep the bound visible to the verifier */
		asm volatile("%[n] &= 0x1fff" : [n] "+r"(n));
		if (n > JA4_CHUNK_MAX || n == 0)
			break;
		ev->hdr.offset = base + off;
		ev->pos = pos0 + base + off;
		ev->hdr.flags &= ~(JA4_F_LAST_CHUNK | JA4_F_READ_FAILED);
		if (bpf_probe_read_user(ev->data, n, (const char *)buf + off)) {
			count_drop(JA4_DROP_READ_USER);
			ev->hdr.flags |= JA4_F_READ_FAILED;
			ev->hdr.data_len = 0;
			ja4_output(ctx, ev, offsetof(struct ja4_data_event, data));
			break;
		}
		/* the slot is per CPU: a preempted uprobe program finds another task's event here */
		if (ev->hdr.tid != (__u32)bpf_get_current_pid_tgid()) {
			count_drop(JA4_DROP_SCRATCH);
			break;
		}
		/* last: the call's bytes are done, or the capture budget is */
		if (base + off + n >= ev->hdr.total || (off + n >= cap && cap == budget))
			ev->hdr.flags |= JA4_F_LAST_CHUNK;
		ev->hdr.data_len = n;
		ja4_output(ctx, ev, offsetof(struct ja4_data_event, data) + n);
		ev->hdr.flags &= ~JA4_F_SYN; /* the first chunk carries it */
		copied += n;
	}
	return copied;
}

/* Raw-stream copy budget left for a TLS stream at `pos` (flags in `v`); `budget` otherwise. */
static __always_inline __u32 raw_tls_budget(__u64 v, __u32 budget)
{
	__u64 pos = v & JA4_POS_MASK;

	if (!(v & JA4_POS_TLS) || raw_tls_bytes == 0)
		return budget;
	if ((v & JA4_POS_DONE) || pos >= raw_tls_bytes)
		return 0;
	return raw_tls_bytes - pos < budget ? raw_tls_bytes - pos : budget;
}

/* Adds flag `bit` to the raw stream's value once, if the flags in `need` are set (an add on a
 * clear bit is an OR). */
static __always_inline void raw_flag(__u32 tgid, __s32 fd, __u64 bit, __u64 need)
{
	struct ja4_conn_key k = {.tgid = tgid, .fd = fd, .stream = JA4_STREAM_RAW};
	struct conn_val *p = bpf_map_lookup_elem(&conn_pos, &k);

	if (p && (p->pos & (bit | need)) == need)
		__sync_fetch_and_add(&p->pos, bit);
}

/* A TLS stream on a watched port: its count of plain connections in a row starts over, and a PLAIN port is
 * followed to its connections' first bytes (ClientHellos) again. Written only when it changes. */
static __always_inline void port_tls(__u16 dport)
{
	__u32 port = dport;
	__u8 *st = bpf_map_lookup_elem(&listen_ports, &port);

	if (st && *st > JA4_PORT_WATCHED)
		*st = JA4_PORT_WATCHED;
}

/* The value of (tgid, fd, stream) in conn_pos, or NULL. */
static __always_inline struct conn_val *conn_lookup(__u32 tgid, __s32 fd, __u32 stream)
{
	struct ja4_conn_key k = {.tgid = tgid, .fd = fd, .stream = stream};

	return bpf_map_lookup_elem(&conn_pos, &k);
}

/*
 * A raw TLS stream past its copy budget: only the position moves (no header, no copy, no event).
 * Returns true when it took the `total` bytes.
 */
static __always_inline bool raw_skip(struct conn_val *p, __u64 total)
{
	if (!p || raw_tls_budget(p->pos, 1) != 0)
		return false;
	__sync_fetch_and_add(&p->pos, total);
	return true;
}

/*
 * The shared body of every "bytes were read" hook: filters to TCP sockets,
 * builds the header, advances the stream position and sends the chunks.
 * Raw TLS streams stop being copied after raw_tls_bytes, or once their
 * plaintext begins (the handshake is then read); positions stay exact.
 */
static __always_inline void handle_read(void *ctx, __u8 hook, __s32 fd, const void *buf, __u64 total,
					__u32 stream)
{
	struct ja4_data_event *ev;
	struct conn_val *cv;
	__u64 v, pos0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 budget = max_capture;
	__u32 cap;

	if (total == 0)
		return;
	cv = conn_lookup(tgid, fd, stream);
	if (stream == JA4_STREAM_RAW && raw_skip(cv, total))
		return;
	if (stream == JA4_STREAM_PLAINTEXT)
		raw_flag(tgid, fd, JA4_POS_DONE, JA4_POS_TLS); /* only a TLS-flagged raw stream */
	ev = scratch_get(hook == JA4_HOOK_APR_RECV || hook == JA4_HOOK_SSL_READ || hook == JA4_HOOK_SSL_READ_EX
				 ? SCRATCH_UPROBE
				 : SCRATCH_TASK);
	if (!ev)
		return;
	if (fill_task_hdr(&ev->hdr, JA4_EV_DATA, hook, fd) > 0)
		return; /* not a TCP socket */
	syn_take(ev, cv == NULL);
	if (budget > JA4_CAPTURE_MAX)
		budget = JA4_CAPTURE_MAX;
	ev->hdr.total = total > 0xffffffffULL ? 0xffffffff : (__u32)total;
	if (stream == JA4_STREAM_PLAINTEXT) {
		ev->hdr.flags |= JA4_F_PLAINTEXT;
		/* a TLS connection's first plaintext (nginx's raw reads are not traced: this is where the kernel
		 * side learns that a port tc stopped following serves TLS) */
		if (cv == NULL)
			port_tls(ev->hdr.dport);
	}
	if (total > budget)
		count_drop(JA4_DROP_TRUNCATED); /* the capture limit; the TLS cut below is intended */
	v = advance_pos(tgid, fd, stream, total, cv);
	pos0 = v & JA4_POS_MASK;
	cap = budget;
	if (stream == JA4_STREAM_RAW) {
		if (pos0 == 0 && raw_tls_bytes != 0) {
			__u8 first = 0;

			if (!bpf_probe_read_user(&first, 1, buf) && first == 0x16) {
				raw_flag(tgid, fd, JA4_POS_TLS, 0);
				port_tls(ev->hdr.dport);
				v |= JA4_POS_TLS;
			}
		}
		cap = raw_tls_budget(v, budget);
		if (cap == 0)
			return;
	}
	if (total > cap)
		ev->hdr.flags |= JA4_F_TRUNCATED;
	emit_chunks(ctx, ev, pos0, buf, total, 0, cap);
}

#endif
