// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Development check of the BPF object with plain libbpf (independent of the agent's FFI):
 *   loadcheck OBJ                     load each program alone; print "name LOADED|<error> insns steps"
 *   loadcheck OBJ --run SECS PID PORT PROG...
 *                                     load PROGs, trace PID, watch PORT on lo (tc), attach, print events
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

static int on_event(void *ctx, void *data, size_t len)
{
	unsigned char *d = data;
	unsigned int data_len, total, offset;
	char comm[17] = {0};

	memcpy(&data_len, d + 76, 4);
	memcpy(&total, d + 80, 4);
	memcpy(&offset, d + 84, 4);
	memcpy(comm, d + 24, 16);
	printf("event kind=%u hook=%u family=%u flags=%u pid=%u fd=%d comm=%s sport=%u dport=%u data_len=%u total=%u offset=%u len=%zu\n",
	       d[0], d[1], d[2], d[3], *(unsigned *)(d + 4), *(int *)(d + 12), comm, *(unsigned short *)(d + 72),
	       *(unsigned short *)(d + 74), data_len, total, offset, len);
	fflush(stdout);
	return 0;
}

static int run(const char *path, int secs, unsigned pid, unsigned short port, char **progs, int nprogs)
{
	struct bpf_object *o = bpf_object__open_file(path, NULL);
	struct bpf_program *p;
	struct ring_buffer *rb;
	unsigned kind = 1;
	unsigned char one = 1;
	int want_tc = 0, err;
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = if_nametoindex("lo"), .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, tco, .handle = 0x4a34, .priority = 0x4a34);

	if (!o)
		return 1;
	bpf_object__for_each_program(p, o)
	{
		int m = 0;
		for (int j = 0; j < nprogs; j++)
			m |= !strcmp(progs[j], bpf_program__name(p));
		bpf_program__set_autoload(p, m);
	}
	if ((err = bpf_object__load(o))) {
		printf("load: %s\n", strerror(-err));
		return 1;
	}
	bpf_map_update_elem(bpf_object__find_map_fd_by_name(o, "traced_pids"), &pid, &kind, BPF_ANY);
	bpf_map_update_elem(bpf_object__find_map_fd_by_name(o, "listen_ports"), &port, &one, BPF_ANY);
	bpf_object__for_each_program(p, o)
	{
		if (!bpf_program__autoload(p))
			continue;
		if (!strcmp(bpf_program__name(p), "tc_ingress")) {
			want_tc = 1;
			bpf_tc_hook_create(&hook); /* EEXIST is fine */
			tco.prog_fd = bpf_program__fd(p);
			if ((err = bpf_tc_attach(&hook, &tco)))
				printf("attach tc: %s\n", strerror(-err));
			continue;
		}
		if (!bpf_program__attach(p))
			printf("attach %s: %s\n", bpf_program__name(p), strerror(errno));
	}
	rb = ring_buffer__new(bpf_object__find_map_fd_by_name(o, "events"), on_event, NULL, NULL);
	printf("ready\n");
	fflush(stdout);
	for (time_t end = time(NULL) + secs; time(NULL) < end;)
		ring_buffer__poll(rb, 100);
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
	if (want_tc) {
		tco.flags = tco.prog_fd = tco.prog_id = 0;
		bpf_tc_detach(&hook, &tco);
	}
	ring_buffer__free(rb);
	bpf_object__close(o);
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(print_fn);
	if (argc < 2)
		return 2;
	if (argc >= 6 && !strcmp(argv[2], "--run"))
		return run(argv[1], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv + 6, argc - 6);
	return check_all(argv[1]);
}
