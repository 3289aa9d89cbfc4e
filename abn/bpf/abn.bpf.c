// SPDX-License-Identifier: GPL-2.0
/*
 * ABN on the sender, on an unpatched kernel: the paper's tcp_abn module as BPF.
 *
 * Two programs share one socket-local storage map:
 *   abn_sockops  (cgroup sock_ops) asks the kernel to call it for TCP options it does
 *                not know (BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG), finds the ABN
 *                option (kind 253, ExID 0xAB4E, 32-bit rate in kbit/s) in each incoming
 *                ACK and stores the rate and its arrival time for the socket;
 *   abn          (struct_ops tcp_congestion_ops, selectable as "abn" like any other
 *                congestion control) reads it in cong_control, which the kernel calls
 *                on every ACK after the options were parsed, and sets
 *                  pacing rate = notified rate x mss / (mss + TCP/IP/Ethernet headers)
 *                  cwnd        = pacing rate x srtt x CWND_GAIN / mss + CWND_EXTRA
 *                so the sender paces at the middlebox's rate and the window never is
 *                what limits it (RTT jitter of up to 2x srtt included).
 * The notified rate is what the shim counts on its link: whole IP packets plus the
 * 14-byte Ethernet header, as HTB counts them; TCP pacing counts payload bytes only,
 * hence the header correction.
 *
 * Without a fresh rate (no option yet, or none for STALE_NS / 8 srtt) the socket is
 * Reno (the kernel's own kfuncs), with the kernel's default pacing ratios, so a flow
 * that does not cross a shim, or whose shim died, still behaves.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char _license[] SEC("license") = "GPL";

#define ABN_KIND 253
#define ABN_EXID_HI 0xAB
#define ABN_EXID_LO 0x4E
#define ABN_OPTION_LEN 8

#define USEC_PER_SEC 1000000ULL
#define STALE_NS 1000000000ULL /* no option for 1 s (or 8 srtt if longer): stale */
#define CWND_GAIN 2
#define CWND_EXTRA 4
#define MIN_CWND 4
#define HEADERS_BELOW_TCP 34 /* IPv4 (20) + Ethernet (14) */
#define TCP_INFINITE_SSTHRESH 0x7fffffff

/* Keep in step with abn/sender.py COUNTERS. */
enum abn_counter {
	C_SOCKETS_ENABLED,  /* sockets that asked for option parsing */
	C_ACKS_WITH_RATE,   /* ACKs that carried a valid ABN option */
	C_ACKS_BAD_LENGTH,  /* our kind and ExID, but not 8 bytes long */
	C_ACKS_NO_OPTION,   /* parse callback without our option (unknown kinds only) */
	C_RATE_CHANGES,     /* ACKs whose rate differed from the socket's last one */
	C_STORAGE_FULL,     /* no socket storage could be made */
	C_CC_INIT,          /* sockets that started with the abn congestion control */
	C_CC_PACED,         /* cong_control calls that applied a fresh notified rate */
	C_CC_FALLBACK,      /* cong_control calls that ran Reno (no fresh rate) */
	C_N
};

struct abn_rate {
	__u64 stamp_ns; /* when the last ABN option arrived */
	__u32 kbps;     /* its rate */
	__u32 acks;     /* ACKs with an option on this socket */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct abn_rate);
} abn_rates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_N);
	__type(key, __u32);
	__type(value, __u64);
} abn_counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&abn_counters, &which);
	if (v)
		*v += 1;
}

/* ---------------------------------------------------------------- sock_ops */

SEC("sockops")
int abn_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					  BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		count(C_SOCKETS_ENABLED);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB: {
		/* The kernel treats 253, like 254, as RFC 6994 experimental: the search key
		 * is kind, 4 (kind + length + 16-bit ExID) and the ExID, and only an option
		 * with our ExID matches. */
		__u8 opt[ABN_OPTION_LEN] = {ABN_KIND, 4, ABN_EXID_HI, ABN_EXID_LO};
		struct bpf_sock *sk = skops->sk;
		struct abn_rate *st;
		__u32 kbps;
		long n;

		n = bpf_load_hdr_opt(skops, opt, sizeof(opt), 0);
		if (n < 0) { /* -ENOMSG: not there (another ExID, or another unknown kind) */
			count(C_ACKS_NO_OPTION);
			break;
		}
		if (n != ABN_OPTION_LEN || opt[1] != ABN_OPTION_LEN) {
			count(C_ACKS_BAD_LENGTH);
			break;
		}
		if (!sk)
			break;
		st = bpf_sk_storage_get(&abn_rates, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			count(C_STORAGE_FULL);
			break;
		}
		kbps = ((__u32)opt[4] << 24) | ((__u32)opt[5] << 16) | ((__u32)opt[6] << 8) | opt[7];
		if (kbps != st->kbps)
			count(C_RATE_CHANGES);
		st->kbps = kbps;
		st->stamp_ns = bpf_ktime_get_ns();
		st->acks += 1;
		count(C_ACKS_WITH_RATE);
		break;
	}
	}
	return 1;
}

/* ------------------------------------------------------ congestion control */

extern void tcp_reno_cong_avoid(struct sock *sk, __u32 ack, __u32 acked) __ksym;
extern __u32 tcp_reno_ssthresh(struct sock *sk) __ksym;
extern __u32 tcp_reno_undo_cwnd(struct sock *sk) __ksym;

struct abn_ca {
	__u32 paced;    /* 1 while the socket follows a fresh notified rate */
	__u32 ca_state; /* last TCP_CA_* state the kernel told us */
};

static __always_inline struct tcp_sock *tcp_sk(const struct sock *sk)
{
	return (struct tcp_sock *)sk;
}

static __always_inline struct abn_ca *abn_ca(const struct sock *sk)
{
	return (struct abn_ca *)((struct inet_connection_sock *)sk)->icsk_ca_priv;
}

static __always_inline __u64 min_u64(__u64 a, __u64 b) { return a < b ? a : b; }
static __always_inline __u64 max_u64(__u64 a, __u64 b) { return a > b ? a : b; }

static __always_inline __u64 srtt_us(const struct tcp_sock *tp)
{
	__u64 s = tp->srtt_us >> 3;
	return s ? s : 1000;
}

/* A fresh notified rate for this socket, or 0 when there is none. */
static __always_inline int fresh_rate(struct sock *sk, __u32 *kbps)
{
	struct abn_rate *st = bpf_sk_storage_get(&abn_rates, sk, NULL, 0);
	__u64 stale;

	if (!st || !st->stamp_ns)
		return 0;
	stale = max_u64(STALE_NS, 8 * srtt_us(tcp_sk(sk)) * 1000);
	if (bpf_ktime_get_ns() - st->stamp_ns > stale)
		return 0;
	*kbps = st->kbps;
	return 1;
}

static __always_inline void pace_to(struct sock *sk, __u32 kbps)
{
	struct tcp_sock *tp = tcp_sk(sk);
	__u64 mss = tp->mss_cache ? tp->mss_cache : 1448;
	__u64 wire = mss + tp->tcp_header_len + HEADERS_BELOW_TCP;
	__u64 pacing = (__u64)kbps * 125 * mss / wire; /* payload bytes per second */
	__u64 cwnd;

	if (pacing < 2 * mss) /* a zero rate still lets ACKs clock a couple of segments */
		pacing = 2 * mss;
	sk->sk_pacing_rate = min_u64(pacing, sk->sk_max_pacing_rate);
	cwnd = pacing * srtt_us(tp) / USEC_PER_SEC * CWND_GAIN / mss + CWND_EXTRA;
	cwnd = max_u64(cwnd, MIN_CWND);
	tp->snd_cwnd = min_u64(cwnd, tp->snd_cwnd_clamp);
}

/* Reno with the kernel's default pacing (200% of cwnd/srtt in slow start, 120% after). */
static __always_inline void reno(struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = tcp_sk(sk);
	struct abn_ca *ca = abn_ca(sk);
	__u64 mss = tp->mss_cache ? tp->mss_cache : 1448;
	__u64 rate;

	if (ca->ca_state >= TCP_CA_Recovery) {
		if (tp->snd_ssthresh < tp->snd_cwnd)
			tp->snd_cwnd = max_u64(tp->snd_ssthresh, 2);
	} else {
		tcp_reno_cong_avoid(sk, ack, acked);
	}
	rate = mss * tp->snd_cwnd * USEC_PER_SEC / srtt_us(tp);
	rate = rate * (tp->snd_cwnd < tp->snd_ssthresh ? 200 : 120) / 100;
	sk->sk_pacing_rate = min_u64(rate, sk->sk_max_pacing_rate);
}

SEC("struct_ops")
void BPF_PROG(abn_init, struct sock *sk)
{
	struct abn_ca *ca = abn_ca(sk);

	ca->paced = 0;
	ca->ca_state = TCP_CA_Open;
	sk->sk_pacing_status = SK_PACING_NEEDED; /* TCP's own pacing; no fq qdisc needed */
	count(C_CC_INIT);
}

SEC("struct_ops")
void BPF_PROG(abn_cong_control, struct sock *sk, __u32 ack, int flag,
	      const struct rate_sample *rs)
{
	struct abn_ca *ca = abn_ca(sk);
	__u32 kbps = 0;

	if (fresh_rate(sk, &kbps)) {
		ca->paced = 1;
		pace_to(sk, kbps);
		count(C_CC_PACED);
		return;
	}
	ca->paced = 0;
	reno(sk, ack, rs->acked_sacked);
	count(C_CC_FALLBACK);
}

SEC("struct_ops")
__u32 BPF_PROG(abn_ssthresh, struct sock *sk)
{
	/* A loss does not change the middlebox's rate; only Reno halves. */
	if (abn_ca(sk)->paced)
		return tcp_sk(sk)->snd_cwnd > 2 ? tcp_sk(sk)->snd_cwnd : 2;
	return tcp_reno_ssthresh(sk);
}

SEC("struct_ops")
__u32 BPF_PROG(abn_undo_cwnd, struct sock *sk)
{
	if (abn_ca(sk)->paced)
		return tcp_sk(sk)->snd_cwnd;
	return tcp_reno_undo_cwnd(sk);
}

SEC("struct_ops")
void BPF_PROG(abn_set_state, struct sock *sk, __u8 new_state)
{
	abn_ca(sk)->ca_state = new_state;
}

SEC(".struct_ops")
struct tcp_congestion_ops abn = {
	.init = (void *)abn_init,
	.cong_control = (void *)abn_cong_control,
	.ssthresh = (void *)abn_ssthresh,
	.undo_cwnd = (void *)abn_undo_cwnd,
	.set_state = (void *)abn_set_state,
	.name = "abn",
};
