// SPDX-License-Identifier: GPL-2.0
/*
 * abn_loader: load abn.bpf.o, register the "abn" congestion control and attach the
 * option parser to one cgroup, for as long as this process lives.
 *
 * Both attachments are BPF links owned by this process's file descriptors, so whatever
 * way it ends (SIGTERM, SIGINT, its parent dying, SIGKILL) the kernel unregisters the
 * congestion control and detaches the sock_ops program: nothing outlives it. Sockets
 * still using abn keep it until they close (the kernel counts references).
 *
 *   abn_loader OBJ --cgroup DIR [--interval S]   run; JSON lines on stdout:
 *        {"event":"ready",...} once attached, {"event":"stats",...} every S seconds
 *        (default 1) and {"event":"final",...} on the way out
 *   abn_loader OBJ --probe                       register, check it is listed in
 *        net.ipv4.tcp_available_congestion_control, unregister, exit 0
 * Exit codes: 0 done, 2 usage, 3 the kernel refused (the message says what).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "attach_types.h" /* ATTACH_STRUCT_OPS, MAP_F_LINK: from this kernel's BTF */

static const char *const COUNTERS[] = {
	"sockets_enabled", "acks_with_rate", "acks_bad_length", "acks_no_option",
	"rate_changes", "storage_full", "cc_init", "cc_paced", "cc_fallback",
};
#define N_COUNTERS (sizeof(COUNTERS) / sizeof(COUNTERS[0]))

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static int die(const char *what, int err)
{
	fprintf(stderr, "abn_loader: %s: %s\n", what, strerror(err < 0 ? -err : err));
	return 3;
}

static int libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static void print_counters(const char *event, struct bpf_map *counters)
{
	int ncpu = libbpf_num_possible_cpus();
	unsigned long long *vals = calloc(ncpu > 0 ? ncpu : 1, sizeof(*vals));
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	printf("{\"event\":\"%s\",\"t\":%.3f", event, ts.tv_sec + ts.tv_nsec / 1e9);
	for (unsigned i = 0; i < N_COUNTERS && vals; i++) {
		unsigned long long sum = 0;
		__u32 key = i;
		if (bpf_map_lookup_elem(bpf_map__fd(counters), &key, vals) == 0)
			for (int c = 0; c < ncpu; c++)
				sum += vals[c];
		printf(",\"%s\":%llu", COUNTERS[i], sum);
	}
	printf("}\n");
	fflush(stdout);
	free(vals);
}

static int listed(void)
{
	char buf[4096] = {0};
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_available_congestion_control", "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
		if (!strcmp(tok, "abn"))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	const char *obj_path = NULL, *cgroup = NULL;
	double interval = 1.0;
	int probe = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cgroup") && i + 1 < argc)
			cgroup = argv[++i];
		else if (!strcmp(argv[i], "--interval") && i + 1 < argc)
			interval = atof(argv[++i]);
		else if (!strcmp(argv[i], "--probe"))
			probe = 1;
		else if (argv[i][0] != '-' && !obj_path)
			obj_path = argv[i];
		else {
			fprintf(stderr, "abn_loader: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	if (!obj_path || (!probe && !cgroup) || interval <= 0) {
		fprintf(stderr, "usage: abn_loader OBJ (--cgroup DIR [--interval S] | --probe)\n");
		return 2;
	}
	libbpf_set_print(libbpf_quiet);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);

	if (!probe && listed()) {
		fprintf(stderr, "abn_loader: a congestion control named abn is already registered "
				"(another run, or a leftover: see `bpftool struct_ops list`)\n");
		return 3;
	}
	struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
	if (!obj)
		return die(obj_path, errno);
	struct bpf_map *ops = bpf_object__find_map_by_name(obj, "abn");
	struct bpf_map *counters = bpf_object__find_map_by_name(obj, "abn_counters");
	struct bpf_program *parser = bpf_object__find_program_by_name(obj, "abn_sockops");
	if (!ops || !counters || !parser) {
		fprintf(stderr, "abn_loader: %s lacks the abn struct_ops, its counters or "
				"abn_sockops\n", obj_path);
		return 3;
	}
	/* A link-based struct_ops: registered by a link fd, gone when the fd closes. */
	int err = bpf_map__set_map_flags(ops, bpf_map__map_flags(ops) | MAP_F_LINK);
	if (err)
		return die("setting BPF_F_LINK on the struct_ops map", err);
	err = bpf_object__load(obj);
	if (err)
		return die("loading the BPF object (verifier log above)", err);
	/* fills the struct_ops value; with BPF_F_LINK this does not register yet */
	struct bpf_link *filled = bpf_map__attach_struct_ops(ops);
	if (!filled)
		return die("filling the abn struct_ops", errno);
	int cc_link = bpf_link_create(bpf_map__fd(ops), 0, ATTACH_STRUCT_OPS, NULL);
	if (cc_link < 0)
		return die("registering the abn congestion control (needs struct_ops links, "
			   "Linux >= 6.4)", cc_link);
	if (probe) {
		int ok = listed();
		close(cc_link);
		printf("{\"event\":\"probe\",\"registered\":%s}\n", ok ? "true" : "false");
		return ok ? 0 : 3;
	}
	int cg_fd = open(cgroup, O_RDONLY | O_DIRECTORY);
	if (cg_fd < 0)
		return die(cgroup, errno);
	struct bpf_link *parse_link = bpf_program__attach_cgroup(parser, cg_fd);
	if (!parse_link)
		return die("attaching the option parser (sock_ops) to the cgroup", errno);

	printf("{\"event\":\"ready\",\"cgroup\":\"%s\",\"pid\":%d}\n", cgroup, getpid());
	fflush(stdout);
	/* A pipe on stdin is a lifeline: its end means whoever started us is gone. */
	struct stat st_in;
	int lifeline = fstat(0, &st_in) == 0 && S_ISFIFO(st_in.st_mode) ? 0 : -1;
	struct timespec last, now;
	clock_gettime(CLOCK_MONOTONIC, &last);
	while (!stop_signal) {
		struct pollfd pfd = {.fd = lifeline, .events = POLLIN};
		int n = poll(&pfd, 1, 100);
		if (n > 0 && (pfd.revents & (POLLHUP | POLLERR)))
			break;
		if (n > 0 && (pfd.revents & POLLIN)) {
			char buf[256];
			if (read(0, buf, sizeof(buf)) <= 0)
				break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - last.tv_sec) + (now.tv_nsec - last.tv_nsec) / 1e9 >= interval) {
			print_counters("stats", counters);
			last = now;
		}
	}
	print_counters("final", counters);
	bpf_link__destroy(parse_link);
	close(cc_link);
	close(cg_fd);
	bpf_object__close(obj);
	return 0;
}
