// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Development check of the BPF object with plain libbpf (independent of the agent's FFI):
 *   loadcheck OBJ                     load each program alone; print "name LOADED|<error> insns steps"
 *   loadcheck OBJ --all-but PROG...   load the whole object with PROGs autoload-disabled
 *   loadcheck OBJ --run SECS PIDS PORT [OPTS] PROG...
 *                                     load PROGs, trace PIDS (a,b,c), watch PORT on lo (tc; 0: none),
 *                                     attach, print events, then drops, stream-gap stats, open streams
 *     OPTS: --global NAME=VALUE   set a .rodata config variable (repeatable)
 *           --perf                use_ringbuf=0, `events` not created, read events_perf (perf_buffer)
 *           --dummy-ring          with --perf: give `events` a stand-in ARRAY fd instead (libbpf < 1.3)
 *           --ring BYTES          events max_entries (with --perf: per-CPU perf buffer size)
 *           --ssl LIB --apr LIB   binaries for the SSL_* / apr_socket_recv uprobes
 *           --hex N --quiet       bytes of hex per event / no event lines
 * Build: cc -O1 -o loadcheck loadcheck.c -lbpf   (src/bpf/layout_test.ts does this in a temp dir)
 */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

static int print_fn(enum libbpf_print_level l, const char *f, va_list a)
{
	return getenv("V") ? vfprintf(stderr, f, a) : 0;
}

static char logbuf[1 << 20];

static int check_all(const char *path)
{
	const char *names[128];
	int n = 0;
	struct bpf_object *o = bpf_object__open_file(path, NULL);
	struct bpf_program *p;

	if (!o) {
		printf("open failed: %s\n", strerror(errno));
		return 1;
	}
	bpf_object__for_each_program(p, o) names[n++] = strdup(bpf_program__name(p));
	bpf_object__close(o);
	for (int i = 0; i < n; i++) {
		struct bpf_program *tp;
		char steps[32] = "-";
		char *st;
		int err;

		o = bpf_object__open_file(path, NULL);
		bpf_object__for_each_program(p, o) bpf_program__set_autoload(p, !strcmp(bpf_program__name(p), names[i]));
		tp = bpf_object__find_program_by_name(o, names[i]);
		logbuf[0] = 0;
		bpf_program__set_log_buf(tp, logbuf, sizeof(logbuf));
		bpf_program__set_log_level(tp, 4);
		err = bpf_object__load(o);
		st = strstr(logbuf, "processed ");
		if (st)
			sscanf(st, "processed %31s", steps);
		printf("%s|%s|%zu|%s\n", names[i], err ? strerror(-err) : "LOADED", bpf_program__insn_cnt(tp), steps);
		bpf_object__close(o);
	}
	return 0;
}

/* ---- --run: attach and print/count events ---- */

struct run_opts {
	int quiet, perf, dummy_ring, hex;
	unsigned ring_bytes;
	const char *ssl_lib, *apr_lib;
	const char *globals[32];
	int nglobals;
};

/* Stream continuity per (pid, fd, stream): a gap in `pos` is bytes whose events were lost. */
struct stream_st {
	unsigned pid;
	int fd, stream, used;
	unsigned long long next;
};
static struct stream_st streams[4096];
static unsigned long long n_kind[8], n_flags_pt, n_data_bytes, n_gaps, n_gap_bytes, n_tail_gaps,
	n_tail_gap_bytes, n_backward, n_perf_lost;
static struct run_opts *g_opts;

static struct stream_st *stream_get(unsigned pid, int fd, int stream)
{
	struct stream_st *free_s = NULL;
	for (int i = 0; i < 4096; i++) {
		struct stream_st *s = &streams[i];
		if (s->used && s->pid == pid && s->fd == fd && s->stream == stream)
			return s;
		if (!s->used && !free_s)
			free_s = s;
	}
	if (free_s)
		*free_s = (struct stream_st){.pid = pid, .fd = fd, .stream = stream, .used = 1};
	return free_s;
}

static void addr_str(char *out, size_t n, unsigned char fam, const unsigned char *a, unsigned short port)
{
	if (fam == 10)
		snprintf(out, n, "[%02x%02x:..:%02x%02x]:%u", a[0], a[1], a[14], a[15], port);
	else
		snprintf(out, n, "%u.%u.%u.%u:%u", a[0], a[1], a[2], a[3], port);
}

static int on_event(void *ctx, void *data, size_t len)
{
	unsigned char *d = data;
	unsigned data_len, total, offset, pid;
	int fd;
	unsigned long long pos = 0, pos_pt = 0;
	char comm[17] = {0}, src[64], dst[64];
	unsigned char kind = d[0], fl = d[3];

	memcpy(&pid, d + 4, 4);
	memcpy(&fd, d + 12, 4);
	memcpy(comm, d + 24, 16);
	memcpy(&data_len, d + 76, 4);
	memcpy(&total, d + 80, 4);
	memcpy(&offset, d + 84, 4);
	if (kind == 1 || kind == 4)
		memcpy(&pos, d + 88, 8);
	if (kind == 4)
		memcpy(&pos_pt, d + 96, 8);
	n_kind[kind & 7]++;
	if (kind == 1) {
		struct stream_st *s = stream_get(pid, fd, (fl & 2) ? 1 : 0);
		n_data_bytes += data_len;
		n_flags_pt += !!(fl & 2);
		if (s) {
			if (pos > s->next) {
				n_gaps++;
				n_gap_bytes += pos - s->next;
			} else if (pos < s->next) {
				n_backward++; /* fd reused without a close event seen */
			}
			/* chunk covers [pos, pos+data_len); a truncated call's tail is a known gap */
			s->next = (fl & 8) ? pos - offset + total : pos + data_len;
		}
	} else if (kind == 4) {
		for (int st = 0; st < 2; st++) {
			struct stream_st *s = stream_get(pid, fd, st);
			unsigned long long fin = st ? pos_pt : pos;
			if (s) {
				if (fin > s->next) {
					n_tail_gaps++;
					n_tail_gap_bytes += fin - s->next;
				}
				s->used = 0;
			}
		}
	}
	if (g_opts->quiet)
		return 0;
	addr_str(src, sizeof(src), d[2], d + 40, *(unsigned short *)(d + 72));
	addr_str(dst, sizeof(dst), d[2], d + 56, *(unsigned short *)(d + 74));
	printf("event kind=%u hook=%u family=%u flags=%u pid=%u tid=%u fd=%d comm=%s src=%s dst=%s data_len=%u total=%u offset=%u len=%zu",
	       kind, d[1], d[2], fl, pid, *(unsigned *)(d + 8), fd, comm, src, dst, data_len, total, offset, len);
	if (kind == 1)
		printf(" pos=%llu", pos);
	if (kind == 4)
		printf(" pos_raw=%llu pos_plaintext=%llu", pos, pos_pt);
	if ((kind == 1 || kind == 3) && data_len) {
		unsigned n = data_len < (unsigned)g_opts->hex ? data_len : (unsigned)g_opts->hex;
		const unsigned char *b = d + 96;
		printf(" hex=");
		for (unsigned i = 0; i < n; i++)
			printf("%02x", b[i]);
		printf(" text=\"");
		for (unsigned i = 0; i < data_len && i < 200; i++)
			putchar(b[i] >= 32 && b[i] < 127 && b[i] != '"' ? b[i] : '.');
		printf("\"");
	}
	printf("\n");
	fflush(stdout);
	return 0;
}

static void on_perf(void *ctx, int cpu, void *data, __u32 size)
{
	on_event(ctx, data, size);
}

static void on_perf_lost(void *ctx, int cpu, __u64 n)
{
	n_perf_lost += n;
}

/* name=value into .rodata, offsets from the (finalized at open) DATASEC. */
static int set_global(struct bpf_object *o, const char *spec)
{
	struct bpf_map *m = bpf_object__find_map_by_name(o, ".rodata");
	struct btf *btf = bpf_object__btf(o);
	const char *eq = strchr(spec, '=');
	size_t sz;
	const void *cur;
	unsigned char data[4096];
	int id;

	if (!m || !btf || !eq)
		return -1;
	cur = bpf_map__initial_value(m, &sz);
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0 || !cur || sz > sizeof(data))
		return -1;
	memcpy(data, cur, sz);
	{
		const struct btf_type *sec = btf__type_by_id(btf, id);
		const struct btf_var_secinfo *vs = btf_var_secinfos(sec);
		for (int i = 0; i < btf_vlen(sec); i++, vs++) {
			const char *vn = btf__name_by_offset(btf, btf__type_by_id(btf, vs->type)->name_off);
			unsigned long long v = strtoull(eq + 1, NULL, 0);
			if (strlen(vn) != (size_t)(eq - spec) || strncmp(vn, spec, eq - spec))
				continue;
			if (vs->offset + vs->size > sz || vs->size > 8)
				return -1;
			memcpy(data + vs->offset, &v, vs->size); /* little-endian host */
			return bpf_map__set_initial_value(m, data, sz);
		}
	}
	return -1;
}

static const char *ssl_func(const char *prog)
{
	if (strstr(prog, "ssl_read_ex"))
		return "SSL_read_ex";
	if (strstr(prog, "ssl_read"))
		return "SSL_read";
	if (strstr(prog, "ssl_hshake"))
		return "SSL_do_handshake";
	return NULL;
}

static int run(const char *path, int secs, const char *pids, unsigned short port, char **progs, int nprogs,
	       struct run_opts *ro)
{
	struct bpf_object *o = bpf_object__open_file(path, NULL);
	struct bpf_program *p;
	struct ring_buffer *rb = NULL;
	struct perf_buffer *pb = NULL;
	unsigned kind = 1;
	unsigned char one = 1;
	int want_tc = 0, err, attached = 0;
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = if_nametoindex("lo"), .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, tco, .handle = 0x4a34, .priority = 0x4a34);

	g_opts = ro;
	if (!o)
		return 1;
	bpf_object__for_each_program(p, o)
	{
		int m = 0;
		for (int j = 0; j < nprogs; j++)
			m |= !strcmp(progs[j], bpf_program__name(p));
		bpf_program__set_autoload(p, m);
	}
	for (int i = 0; i < ro->nglobals; i++)
		if (set_global(o, ro->globals[i])) {
			printf("bad --global %s\n", ro->globals[i]);
			return 1;
		}
	if (ro->perf) {
		struct bpf_map *ev = bpf_object__find_map_by_name(o, "events");
		set_global(o, "use_ringbuf=0");
		if (ro->dummy_ring) {
			/* stand-in for the ring buffer: an fd the dead ringbuf branch can name */
			int dfd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "ja4_noring", 4, 4, 1, NULL);
			if (dfd < 0 || bpf_map__reuse_fd(ev, dfd)) {
				printf("dummy ring: %s\n", strerror(errno));
				return 1;
			}
		} else {
			bpf_map__set_autocreate(ev, false);
		}
	}
	if (ro->ring_bytes && !ro->perf)
		bpf_map__set_max_entries(bpf_object__find_map_by_name(o, "events"), ro->ring_bytes);
	if ((err = bpf_object__load(o))) {
		printf("load: %s\n", strerror(-err));
		return 1;
	}
	for (const char *c = pids; c && *c;) {
		unsigned pid = strtoul(c, (char **)&c, 10);
		bpf_map_update_elem(bpf_object__find_map_fd_by_name(o, "traced_pids"), &pid, &kind, BPF_ANY);
		if (*c == ',')
			c++;
		else
			break;
	}
	if (port) {
		__u32 key = port; /* listen_ports is an array indexed by the port */
		bpf_map_update_elem(bpf_object__find_map_fd_by_name(o, "listen_ports"), &key, &one, BPF_ANY);
	}
	bpf_object__for_each_program(p, o)
	{
		const char *name = bpf_program__name(p);
		if (!bpf_program__autoload(p))
			continue;
		if (!strcmp(name, "tc_ingress")) {
			want_tc = 1;
			bpf_tc_hook_create(&hook); /* EEXIST is fine */
			tco.prog_fd = bpf_program__fd(p);
			if ((err = bpf_tc_attach(&hook, &tco)))
				printf("attach tc: %s\n", strerror(-err));
			else
				attached++;
			continue;
		}
		if (strstr(name, "apr_socket_recv") || ssl_func(name)) {
			int is_apr = !!strstr(name, "apr_socket_recv");
			LIBBPF_OPTS(bpf_uprobe_opts, uo, .func_name = is_apr ? "apr_socket_recv" : ssl_func(name),
				    .retprobe = !strncmp(name, "uret", 4));
			const char *bin = is_apr ? (ro->apr_lib ? ro->apr_lib : "libapr-1.so.0")
						 : (ro->ssl_lib ? ro->ssl_lib : "libssl.so.3");
			if (!bpf_program__attach_uprobe_opts(p, -1, bin, 0, &uo))
				printf("attach %s: %s\n", name, strerror(errno));
			else
				attached++;
			continue;
		}
		if (!bpf_program__attach(p))
			printf("attach %s: %s\n", name, strerror(errno));
		else
			attached++;
	}
	if (ro->perf)
		pb = perf_buffer__new(bpf_object__find_map_fd_by_name(o, "events_perf"),
				      ro->ring_bytes ? ro->ring_bytes / 4096 : 64, on_perf, on_perf_lost,
				      NULL, NULL);
	else
		rb = ring_buffer__new(bpf_object__find_map_fd_by_name(o, "events"), on_event, NULL, NULL);
	if (!rb && !pb) {
		printf("buffer: %s\n", strerror(errno));
		return 1;
	}
	printf("ready attached=%d\n", attached);
	fflush(stdout);
	for (time_t end = time(NULL) + secs; time(NULL) < end;) {
		if (pb)
			perf_buffer__poll(pb, 100);
		else
			ring_buffer__poll(rb, 100);
	}
	if (pb)
		perf_buffer__consume(pb);
	else
		ring_buffer__consume(rb);
	{
		int ncpu = libbpf_num_possible_cpus(), fd = bpf_object__find_map_fd_by_name(o, "drops");
		unsigned long long v[ncpu];
		printf("drops");
		for (unsigned k = 0; bpf_map_lookup_elem(fd, &k, v) == 0; k++) {
			unsigned long long sum = 0;
			for (int c = 0; c < ncpu; c++)
				sum += v[c];
			printf(" %u=%llu", k, sum);
		}
		printf("\n");
	}
	printf("stats data=%llu syn=%llu pkt=%llu close=%llu plaintext=%llu data_bytes=%llu gaps=%llu gap_bytes=%llu "
	       "tail_gaps=%llu tail_gap_bytes=%llu backward=%llu perf_lost=%llu\n",
	       n_kind[1], n_kind[2], n_kind[3], n_kind[4], n_flags_pt, n_data_bytes, n_gaps, n_gap_bytes, n_tail_gaps,
	       n_tail_gap_bytes, n_backward, n_perf_lost);
	{
		/* streams still open: their final positions from conn_pos */
		int fd = bpf_object__find_map_fd_by_name(o, "conn_pos");
		struct {
			unsigned tgid;
			int fd;
			unsigned stream, pad;
		} k, nk;
		unsigned long long v, open_gap = 0, open_n = 0;
		void *prev = NULL;
		while (bpf_map_get_next_key(fd, prev, &nk) == 0) {
			k = nk;
			prev = &k;
			if (bpf_map_lookup_elem(fd, &k, &v))
				continue;
			v &= (1ULL << 62) - 1; /* raw-stream flags (JA4_POS_*) off */
			for (int i = 0; i < 4096; i++) {
				struct stream_st *s = &streams[i];
				if (s->used && s->pid == k.tgid && s->fd == k.fd && s->stream == (int)k.stream) {
					open_n++;
					if (v > s->next)
						open_gap += v - s->next;
				}
			}
		}
		printf("open streams=%llu open_tail_gap_bytes=%llu\n", open_n, open_gap);
	}
	fflush(stdout);
	if (want_tc) {
		tco.flags = tco.prog_fd = tco.prog_id = 0;
		bpf_tc_detach(&hook, &tco);
	}
	ring_buffer__free(rb);
	perf_buffer__free(pb);
	bpf_object__close(o);
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(print_fn);
	if (argc < 2)
		return 2;
	if (argc >= 3 && !strcmp(argv[2], "--all-but")) {
		/* one object, every program but the named ones: what the agent's load does */
		struct bpf_object *o = bpf_object__open_file(argv[1], NULL);
		struct bpf_program *p;
		int err;
		if (!o)
			return 1;
		bpf_object__for_each_program(p, o)
		{
			for (int j = 3; j < argc; j++)
				if (!strcmp(argv[j], bpf_program__name(p)))
					bpf_program__set_autoload(p, false);
		}
		err = bpf_object__load(o);
		printf("%s\n", err ? strerror(-err) : "ALL LOADED");
		bpf_object__close(o);
		return err ? 1 : 0;
	}
	if (argc >= 6 && !strcmp(argv[2], "--run")) {
		static struct run_opts ro = {.hex = 16};
		int i = 6;
		for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
			if (!strcmp(argv[i], "--quiet"))
				ro.quiet = 1;
			else if (!strcmp(argv[i], "--perf"))
				ro.perf = 1;
			else if (!strcmp(argv[i], "--dummy-ring"))
				ro.dummy_ring = 1;
			else if (!strcmp(argv[i], "--global") && i + 1 < argc && ro.nglobals < 32)
				ro.globals[ro.nglobals++] = argv[++i];
			else if (!strcmp(argv[i], "--ring") && i + 1 < argc)
				ro.ring_bytes = strtoul(argv[++i], NULL, 0);
			else if (!strcmp(argv[i], "--hex") && i + 1 < argc)
				ro.hex = atoi(argv[++i]);
			else if (!strcmp(argv[i], "--ssl") && i + 1 < argc)
				ro.ssl_lib = argv[++i];
			else if (!strcmp(argv[i], "--apr") && i + 1 < argc)
				ro.apr_lib = argv[++i];
			else {
				fprintf(stderr, "unknown option %s\n", argv[i]);
				return 2;
			}
		}
		return run(argv[1], atoi(argv[3]), argv[4], atoi(argv[5]), argv + i, argc - i, &ro);
	}
	return check_all(argv[1]);
}
