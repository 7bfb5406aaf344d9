/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Event layouts shared by every BPF program and (through scripts/gen-layout.ts,
 * from the object's BTF) by the TypeScript decoder in src/bpf/layout.gen.ts.
 *
 * Rules: fixed-width fields only, every padding byte written out as a named
 * `_padN` field, every struct a multiple of 8 bytes, constants as enums (enums
 * travel in BTF; #defines do not). All multi-byte fields are host byte order
 * (ports included); addresses are network order bytes. Change a struct here and
 * rebuild: layout_test.ts fails until src/bpf/layout.gen.ts is regenerated.
 *
 * This header is included by BPF C only (vmlinux.h provides __u8 etc.).
 */
#ifndef JA4EBPF_H
#define JA4EBPF_H

/* What an event carries. */
enum ja4_event_kind {
	JA4_EV_DATA = 1,  /* bytes a traced server read from a socket (one chunk) */
	/* 2 was a record per client SYN: its facts now ride on the connection's first read (JA4_F_SYN) */
	JA4_EV_PKT = 3,   /* client->server payload bytes of a new connection, from tc */
	JA4_EV_CLOSE = 4, /* a traced process closed a socket fd it had read from */
};

/* Which hook produced the event (the capture method). */
enum ja4_hook {
	JA4_HOOK_NONE = 0,
	JA4_HOOK_TP_RECVFROM = 1,     /* tracepoint/syscalls/sys_{enter,exit}_recvfrom */
	JA4_HOOK_KSYSCALL_RECVFROM = 2, /* ksyscall/kretsyscall recvfrom (kprobes) */
	JA4_HOOK_FEXIT_RECVFROM = 3,  /* fentry/fexit __x64_sys_recvfrom (trampolines) */
	JA4_HOOK_RAW_TP = 4,          /* raw_tp/sys_{enter,exit} filtered by syscall nr */
	JA4_HOOK_TP_BTF = 5,          /* tp_btf/sys_{enter,exit} filtered by syscall nr */
	JA4_HOOK_APR_RECV = 6,        /* uprobe/uretprobe apr_socket_recv (Apache) */
	JA4_HOOK_TP_READ = 7,         /* tracepoint/syscalls/sys_{enter,exit}_read */
	JA4_HOOK_TP_READV = 8,        /* tracepoint/syscalls/sys_{enter,exit}_readv */
	JA4_HOOK_SSL_READ = 9,        /* uprobe/uretprobe SSL_read (plaintext) */
	JA4_HOOK_SSL_READ_EX = 10,    /* uprobe/uretprobe SSL_read_ex (plaintext) */
	JA4_HOOK_TC = 11,             /* tc/clsact ingress */
	JA4_HOOK_TP_CLOSE = 12,       /* tracepoint/syscalls/sys_enter_close */
};

/* Bits of ja4_event_hdr.flags. */
enum ja4_event_flags {
	JA4_F_TRUNCATED = 1,   /* total exceeded the capture limit: bytes past it were not copied */
	JA4_F_PLAINTEXT = 2,   /* decrypted TLS bytes (SSL_read): stream 1 of the connection */
	JA4_F_NO_TUPLE = 4,    /* the 4-tuple could not be read (family == 0) */
	JA4_F_LAST_CHUNK = 8,  /* last chunk of this syscall / call */
	JA4_F_READ_FAILED = 16, /* probe-read of the bytes failed: data_len is 0 */
	JA4_F_SYN = 32,        /* ja4_data_event.syn holds the client SYN tc saw (first chunk of a stream's first read) */
};

/* Server kinds: the value of traced_pids. */
enum ja4_server_kind {
	JA4_SERVER_NGINX = 1,
	JA4_SERVER_APACHE = 2,
	JA4_SERVER_OTHER = 3,
};

/*
 * The traced_pids value: the server kind in its low byte; above it two 12-bit counters that a process's
 * entry probes raise from zero (once, or a few times when threads race: only zero vs non-zero matters).
 * Non-zero tells the syscall hooks that this process's reads may sit inside an SSL_* call whose fd they
 * must learn, or inside apr_socket_recv (whose probes report the bytes): a process that never ran those
 * probes (nginx with its own ngx_ssl_recv probe, or plain HTTP) skips both map lookups on every read.
 * User space reads the kind through JA4_TRACED_KIND_BITS.
 */
enum ja4_traced_bits {
	JA4_TRACED_KIND_BITS = 8,  /* kind = value & ((1 << 8) - 1) */
	JA4_TRACED_SSL_SHIFT = 8,  /* bits 8-19: SSL_read/SSL_read_ex/SSL_do_handshake entries stashed */
	JA4_TRACED_APR_SHIFT = 20, /* bits 20-31: apr_socket_recv entries */
	JA4_TRACED_COUNTER_BITS = 12,
};
/* Per-connection byte streams (key of conn_pos). */
enum ja4_stream {
	JA4_STREAM_RAW = 0,       /* bytes as read from the socket (TLS records for HTTPS) */
	JA4_STREAM_PLAINTEXT = 1, /* bytes returned by SSL_read */
};

/* Index of the per-CPU `drops` counters. */
enum ja4_drop_reason {
	JA4_DROP_RINGBUF = 0,      /* bpf_ringbuf_output failed (ring full) */
	JA4_DROP_PERFBUF = 1,      /* bpf_perf_event_output failed */
	JA4_DROP_READ_USER = 2,    /* probe-read of user bytes failed */
	JA4_DROP_READ_KERNEL = 3,  /* probe-read of task/file/socket failed */
	JA4_DROP_STASH_FULL = 4,   /* an entry->exit stash map update failed */
	JA4_DROP_TRUNCATED = 5,    /* a call read more than max_capture bytes (not lost events: cut bytes) */
	JA4_DROP_SCRATCH = 6,      /* per-CPU scratch lookup failed */
	JA4_DROP_SKB_LOAD = 7,     /* bpf_skb_load_bytes failed */
	JA4_DROP_FLOW_FULL = 8,    /* flows or syn_facts update failed (tc) */
	JA4_DROP_NO_STASH = 9,     /* a uretprobe without its entry (e.g. attached mid-call) */
	JA4_DROP_SSL_NO_FD = 10,   /* SSL_read returned bytes but its fd was never learned */
	JA4_DROP_FOLLOW_FULL = 11, /* traced_pids full: a forked/exec'd server process not added */
	JA4_DROP_LOST_READ = 12,   /* of RINGBUF/PERFBUF: a data event that began a read (offset 0) was lost,
				    * so were the requests in that read: the unit in which rows are missing */
	JA4_DROP_MAX = 13,
};

/*
 * listen_ports values. A watched port counts its new connections that began in plain text in a row
 * (WATCHED + n); after PLAIN_AFTER of them it is PLAIN: tc keeps its SYNs but no longer follows each new
 * connection to its first byte (no flow: two LRU updates less per connection). A TLS stream on the port
 * (tc's first byte, a raw read's, or an SSL_read's plaintext) makes it WATCHED again, as does user space
 * adding it or a server's listen().
 */
enum ja4_port_state {
	JA4_PORT_OFF = 0,
	JA4_PORT_WATCHED = 1,
	JA4_PORT_PLAIN_AFTER = 64,
	JA4_PORT_PLAIN = 255,
};

/* Index of the per-CPU `stats` counters: what the programs did that is not a loss. */
enum ja4_stat {
	JA4_STAT_RING_WAKEUP = 0, /* a record crossed a sixteenth of the ring: the reader was woken */
	JA4_STAT_MAX = 1,
};

/* Compile-time limits (the rodata knobs may lower them, not raise them). */
enum ja4_limits {
	JA4_CHUNK_MAX = 4096,        /* bytes of data per JA4_EV_DATA event */
	JA4_CHUNKS_MAX = 4,          /* chunks per call: 16 KiB per syscall */
	JA4_CAPTURE_MAX = 16384,     /* JA4_CHUNK_MAX * JA4_CHUNKS_MAX */
	JA4_PKT_MAX = 4096,          /* bytes per JA4_EV_PKT event; also the most tc copies per connection */
	JA4_TCP_OPT_MAX = 40,
	JA4_COMM_LEN = 16,
	JA4_IOV_MAX = 4,             /* readv: iovecs looked at */
};

/* Address family (ja4_event_hdr.family), Linux values. */
enum ja4_family {
	JA4_AF_UNSPEC = 0,
	JA4_AF_INET = 2,
	JA4_AF_INET6 = 10,
};

/*
 * Common header of every event (88 bytes). The 4-tuple is oriented client ->
 * server: saddr/sport are the peer (client) of the server's socket, daddr/dport
 * the local (server) side, the same orientation as the packets tc sees.
 * IPv4 addresses sit in the first 4 bytes of saddr/daddr, rest zero.
 */
struct ja4_event_hdr {
	__u8 kind;          /* enum ja4_event_kind */
	__u8 hook;          /* enum ja4_hook */
	__u8 family;        /* enum ja4_family */
	__u8 flags;         /* enum ja4_event_flags bits */
	__u32 pid;          /* tgid (0 for tc events) */
	__u32 tid;          /* thread id (0 for tc events) */
	__s32 fd;           /* -1 for tc events */
	__u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u8 comm[16];
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 data_len;     /* bytes of data[] following the kind-specific part */
	__u32 total;        /* bytes of the whole call / segment payload */
	__u32 offset;       /* offset of data[0] within those `total` bytes */
};

/* The client SYN of a connection (JA4T inputs), as tc saw it. */
struct ja4_syn_facts {
	__u64 ts_ns;        /* bpf_ktime_get_ns() when tc saw the SYN */
	__u32 seq;
	__u16 window;
	__u8 ttl;           /* TTL or hop limit */
	__u8 opt_len;       /* bytes of options[] used */
	__u16 ip_len;       /* IPv4 total length / IPv6 payload length */
	__u8 ip_flags;      /* IPv4: DF = 2 (bits of frag_off >> 13); IPv6: 0 */
	__u8 tcp_flags;     /* byte 13 of the TCP header */
	__u32 _pad0;
	__u8 options[JA4_TCP_OPT_MAX];
};

/* JA4_EV_DATA: one chunk of bytes read by a traced server. */
struct ja4_data_event {
	struct ja4_event_hdr hdr;
	__u64 pos;          /* stream position of data[0]: bytes of the stream before it */
	struct ja4_syn_facts syn; /* valid when hdr.flags has JA4_F_SYN, zero otherwise */
	__u8 data[JA4_CHUNK_MAX]; /* only hdr.data_len bytes are sent */
};

/* JA4_EV_PKT: client->server payload of a new connection, in segments. */
struct ja4_pkt_event {
	struct ja4_event_hdr hdr; /* offset = seq - (isn + 1): position in the client stream */
	__u32 seq;
	__u32 _pad0;
	__u8 data[JA4_PKT_MAX];   /* only hdr.data_len bytes are sent */
};

/* JA4_EV_CLOSE: a traced process closed a socket it had read from. */
struct ja4_close_event {
	struct ja4_event_hdr hdr;
	__u64 pos_raw;       /* bytes seen on the raw stream */
	__u64 pos_plaintext; /* bytes seen on the plaintext stream */
};

/* A client->server 4-tuple, oriented as the event header: the key of tc's flows and of syn_facts. */
struct ja4_flow_key {
	__u8 family;        /* enum ja4_family */
	__u8 _pad0;
	__u16 sport;
	__u16 dport;
	__u16 _pad1;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Key of conn_pos. */
struct ja4_conn_key {
	__u32 tgid;
	__s32 fd;
	__u32 stream;       /* enum ja4_stream */
	__u32 _pad0;
};

#endif /* JA4EBPF_H */
