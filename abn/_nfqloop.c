/*
 * abn._nfqloop: the compiled NFQUEUE hot path, shared by the delay line (testbed.linkemu)
 * and, next, the ABN shim.
 *
 * One Loop serves many "lanes": a lane is one NFQUEUE (in any network namespace) with
 * its own scheduling settings, counters and verdict buffer. The per-packet work never
 * enters Python: receive (recvmmsg), decide (loss, delay, jitter; the Scheduler below),
 * schedule (a FIFO for ordered traffic, a binary heap for reordering jitter), and verdict
 * (batched: a run of FIFO packets is released with one NFQNL_MSG_VERDICT_BATCH, and all
 * verdicts due in one round go to the kernel in a single sendto). Loop.start() runs it
 * in its own (SCHED_FIFO) thread, so Python's own work (the control channel, counters
 * streamed to disk) never delays a release. The loop thread owns the lanes: Python reads
 * counters without a lock (single-writer 64-bit words) and hands settings changes over
 * through a per-lane mailbox that the loop applies between rounds; no lock is shared, so
 * a descheduled Python thread can never stall a release (a mutex did, by up to 2 ms).
 * Loop.run(seconds) runs the loop in the calling thread instead (tests).
 *
 * Timing: every wait is epoll_pwait2 with a nanosecond timeout, started `lead` before
 * the next release (lead = a running upper estimate of how late this process's timer
 * wake-ups are, capped at MAX_LEAD_NS), then the last stretch is spun on the clock while still taking packets,
 * so a packet leaves at its release time, not a wake-up latency after it. Arrival time
 * is read right after each receive batch; packets that woke a sleeping loop arrived one
 * wake-up latency (the same learned lead) before it ran, and are stamped so: without
 * this, every pass through a delay line added ~0.1 ms here (8 passes: +0.8 ms).
 *
 * The Scheduler is pure (no I/O) and exposed to Python as abn._nfqloop.Scheduler, so the
 * same policy tests run against it and against the Python reference in testbed.linkemu;
 * both draw from the same SplitMix64 stream and so agree exactly.
 *
 * Rewrite hook (for the ABN shim): a lane may carry a rewrite_fn that sees each packet's
 * bytes (the lane then copies packets, not metadata) and may change them in place; a
 * changed packet's verdict carries the new payload.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define NS_PER_S 1000000000LL
#define MAX_LEAD_NS 250000LL       /* never wake more than 250 us early */
#define LATE_NS 1000000LL          /* "late": released more than 1 ms after its time */
#define QUEUE_MAXLEN 1000000u      /* kernel queue bound per lane (packets) */
#define RCVBUF (64 * 1024 * 1024)
#define RECV_BATCH 64
#define META_BUFSZ 4096
#define PKT_BUFSZ (65536 + 4096)
#define VBUF_SZ (512 * 1024)
#define MAX_DRAIN 2048             /* messages per lane per round, so releases stay on time */
#define HELD_LIMIT 4000000u        /* scheduler entries per lane */
#define HELD_BYTES_LIMIT (256u * 1024 * 1024) /* bytes of rewritten packets held per lane */
#define NHIST 8
#define WAKE_TAG 0xfffffffeu
#define SPIN_SHARE_PCT 5                  /* spin at most 5% of the time... */
#define SPIN_BUDGET_MAX_NS 20000000LL     /* ...saving up at most 20 ms of it */
#define CTL_TAG 0xffffffffu

static const int64_t hist_edges_ns[NHIST - 1] = {50000, 100000, 250000, 500000,
                                                 1000000, 2000000, 5000000};

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* ---------------------------------------------------------------- random numbers */

static inline uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline double rng_uniform(uint64_t *s) { return (double)(splitmix64(s) >> 11) * 0x1.0p-53; }

/* ---------------------------------------------------------------- the scheduler */

typedef struct {
    int64_t t;     /* release time, ns (CLOCK_MONOTONIC) */
    uint64_t seq;  /* arrival order: breaks ties in the heap */
    uint32_t pid;  /* kernel packet id */
    uint32_t len;  /* length of pkt when the packet was rewritten */
    uint8_t *pkt;  /* rewritten packet bytes, or NULL */
} item_t;

typedef struct {
    uint64_t received, dropped, released, late_over_1ms, overflow, verdict_errors;
    uint64_t rewritten, rewrite_skipped;
    uint64_t max_held;
    int64_t late_max_ns, period_late_max_ns, late_sum_ns;
    uint64_t late_hist[NHIST];
} counters_t;

typedef struct {
    int64_t delay_ns, jitter_ns;
    double loss;
    int reorder;
    uint64_t rng;
    item_t *fifo;
    size_t fcap, fhead, flen;
    item_t *heap;
    size_t hcap, hlen;
    int64_t last_release;
    uint64_t seq;
    uint64_t held_bytes;
    counters_t c;
} sched_t;

static void sched_init(sched_t *s, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    s->rng = seed;
    s->reorder = 1;
}

static void sched_free(sched_t *s) {
    for (size_t i = 0; i < s->flen; i++) free(s->fifo[(s->fhead + i) % s->fcap].pkt);
    for (size_t i = 0; i < s->hlen; i++) free(s->heap[i].pkt);
    free(s->fifo);
    free(s->heap);
    s->fifo = s->heap = NULL;
    s->flen = s->hlen = s->fcap = s->hcap = 0;
}

static inline int sched_ordered(const sched_t *s) { return s->jitter_ns == 0 || !s->reorder; }
static inline size_t sched_held(const sched_t *s) { return s->flen + s->hlen; }

static inline int item_before(const item_t *a, const item_t *b) {
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static int heap_push(sched_t *s, item_t it) {
    if (s->hlen == s->hcap) {
        size_t ncap = s->hcap ? s->hcap * 2 : 1024;
        item_t *n = realloc(s->heap, ncap * sizeof(item_t));
        if (!n) return -1;
        s->heap = n;
        s->hcap = ncap;
    }
    size_t i = s->hlen++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!item_before(&it, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = it;
    return 0;
}

static item_t heap_pop(sched_t *s) {
    item_t top = s->heap[0];
    item_t last = s->heap[--s->hlen];
    size_t i = 0, n = s->hlen;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const item_t *best = &last;
        if (l < n && item_before(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && item_before(&s->heap[r], best)) { m = r; }
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

static int fifo_push(sched_t *s, item_t it) {
    if (s->flen == s->fcap) {
        size_t ncap = s->fcap ? s->fcap * 2 : 1024;
        item_t *n = malloc(ncap * sizeof(item_t));
        if (!n) return -1;
        for (size_t i = 0; i < s->flen; i++) n[i] = s->fifo[(s->fhead + i) % s->fcap];
        free(s->fifo);
        s->fifo = n;
        s->fcap = ncap;
        s->fhead = 0;
    }
    s->fifo[(s->fhead + s->flen) % s->fcap] = it;
    s->flen++;
    return 0;
}

/* Decide a packet's fate on arrival: 1 = held for release, 0 = drop it now,
 * -1 = no room (counted as overflow; the caller drops it). */
static int sched_admit(sched_t *s, uint32_t pid, int64_t now, uint8_t *pkt, uint32_t len) {
    counters_t *c = &s->c;
    c->received++;
    if (s->loss > 0 && rng_uniform(&s->rng) < s->loss) {
        c->dropped++;
        return 0;
    }
    if (sched_held(s) >= HELD_LIMIT) {
        c->overflow++;
        return -1;
    }
    int64_t delay = s->delay_ns;
    if (s->jitter_ns) {
        double u = rng_uniform(&s->rng);
        delay += (int64_t)floor((2.0 * u - 1.0) * (double)s->jitter_ns + 0.5);
        if (delay < 0) delay = 0;
    }
    item_t it = {now + delay, s->seq++, pid, len, pkt};
    int rc;
    if (sched_ordered(s)) {
        if (it.t < s->last_release) it.t = s->last_release;
        /* switched from reordering: drain the heap first, in order */
        rc = s->hlen ? heap_push(s, it) : fifo_push(s, it);
    } else {
        rc = heap_push(s, it);
    }
    if (rc < 0) {
        c->overflow++;
        return -1;
    }
    if (it.t > s->last_release) s->last_release = it.t;
    if (pkt) s->held_bytes += len;
    size_t held = sched_held(s);
    if (held > c->max_held) c->max_held = held;
    return 1;
}

static inline void note_late(counters_t *c, int64_t late) {
    if (late < 0) late = 0;
    c->late_sum_ns += late;
    if (late > c->late_max_ns) c->late_max_ns = late;
    if (late > c->period_late_max_ns) c->period_late_max_ns = late;
    if (late > LATE_NS) c->late_over_1ms++;
    int b = 0;
    while (b < NHIST - 1 && late >= hist_edges_ns[b]) b++;
    c->late_hist[b]++;
}

static int64_t sched_next(const sched_t *s) {
    int64_t t = INT64_MAX;
    if (s->flen) t = s->fifo[s->fhead].t;
    if (s->hlen && s->heap[0].t < t) t = s->heap[0].t;
    return t;
}

/* Emit what is due at `now`: a FIFO run through `batch` (called once with the highest id,
 * or not at all), then single packets in release order. `late_now` is the time used to
 * measure lateness (INT64_MAX: release everything, lateness not counted). */
typedef struct {
    void (*batch)(void *ctx, uint32_t last_pid, int n);
    void (*single)(void *ctx, item_t *it);
    void *ctx;
} emit_t;

static void sched_due(sched_t *s, int64_t now, const emit_t *e) {
    counters_t *c = &s->c;
    int measure = now != INT64_MAX;
    if (s->flen && s->fifo[s->fhead].t <= now) {
        uint32_t last = 0;
        int n = 0;
        while (s->flen && s->fifo[s->fhead].t <= now) {
            item_t *it = &s->fifo[s->fhead];
            if (measure) note_late(c, now - it->t);
            if (it->pkt) {
                /* a rewritten packet needs its own verdict: flush the run before it */
                if (n) { e->batch(e->ctx, last, n); n = 0; }
                e->single(e->ctx, it);
                s->held_bytes -= it->len;
                free(it->pkt);
            } else {
                last = it->pid;
                n++;
            }
            s->fhead = (s->fhead + 1) % s->fcap;
            s->flen--;
            c->released++;
        }
        if (n) e->batch(e->ctx, last, n);
    }
    while (s->hlen && s->heap[0].t <= now) {
        item_t it = heap_pop(s);
        if (measure) note_late(c, now - it.t);
        e->single(e->ctx, &it);
        if (it.pkt) { s->held_bytes -= it.len; free(it.pkt); }
        c->released++;
    }
}

/* ---------------------------------------------------------------- the ABN option */
/*
 * The compiled twin of abn/options.py's write_rate (the reference; a differential
 * property test holds them byte for byte): put a rate (kbit/s) into a pure ACK's ABN
 * option (kind 253, RFC 6994 ExID 0xAB4E, 32-bit rate), fixing the data offset, the IP
 * total length and both checksums (the TCP one always in full: veth hands over
 * CHECKSUM_PARTIAL segments). A packet it will not rewrite is left untouched and the
 * outcome says why. Pure ACKs carry no payload, so only the option area moves.
 */
enum abn_outcome {
    ABN_WRITTEN, ABN_REPLACED, ABN_NO_ROOM, ABN_NOT_PURE_ACK, ABN_NOT_IPV4_TCP,
    ABN_FRAGMENT, ABN_MALFORMED_IP, ABN_MALFORMED_TCP, ABN_MALFORMED_OPTIONS,
};
#define ABN_OUTCOMES 9
static const char *abn_outcome_names[ABN_OUTCOMES] = {
    "written", "replaced", "no_room", "not_pure_ack", "not_ipv4_tcp", "fragment",
    "malformed_ip", "malformed_tcp", "malformed_options",
};
#define ABN_KIND 253
#define ABN_EXID 0xAB4E
#define ABN_OPTLEN 8
#define TCP_OPT_SPACE 40

static uint32_t ones_sum(const uint8_t *p, size_t n, uint32_t acc) {
    for (size_t i = 0; i + 1 < n; i += 2) acc += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) acc += (uint32_t)(p[n - 1] << 8);
    return acc;
}

static uint16_t fold(uint32_t acc) {
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

/* Rewrites pkt (len bytes, room for cap) in place; *newlen is its new length. */
static int abn_write_rate(uint8_t *pkt, uint32_t len, uint32_t cap, uint32_t rate,
                          uint32_t *newlen) {
    *newlen = len;
    if (len < 20) return ABN_MALFORMED_IP;
    if (pkt[0] >> 4 != 4) return ABN_NOT_IPV4_TCP;
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4, total = (uint32_t)(pkt[2] << 8 | pkt[3]);
    if (ihl < 20 || ihl > len || total != len) return ABN_MALFORMED_IP;
    if ((pkt[6] << 8 | pkt[7]) & 0x3fff) return ABN_FRAGMENT;
    if (pkt[9] != 6) return ABN_NOT_IPV4_TCP;
    if (len - ihl < 20) return ABN_MALFORMED_TCP;
    uint8_t *tcp = pkt + ihl;
    uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || ihl + doff > len) return ABN_MALFORMED_TCP;
    uint8_t flags = tcp[13];
    if (!(flags & 0x10) || (flags & 0x07) || len - ihl - doff) return ABN_NOT_PURE_ACK;
    const uint8_t *area = tcp + 20;
    uint32_t alen = doff - 20, off = 0, keep = 0;
    int ours = 0;
    uint32_t ours_at[TCP_OPT_SPACE];
    while (off < alen) {               /* parse: structure only, EOL ends the list */
        uint8_t kind = area[off];
        if (kind == 0) break;
        if (kind == 1) { off++; continue; }
        if (off + 1 >= alen) return ABN_MALFORMED_OPTIONS;
        uint32_t olen = area[off + 1];
        if (olen < 2 || off + olen > alen) return ABN_MALFORMED_OPTIONS;
        if (kind == ABN_KIND && olen >= 4 && (area[off + 2] << 8 | area[off + 3]) == ABN_EXID) {
            if (olen != ABN_OPTLEN) return ABN_MALFORMED_OPTIONS;
            ours_at[ours++] = off;
        }
        off += olen;
        keep = off;                    /* end of the last real option */
    }
    uint8_t rate_be[4] = {(uint8_t)(rate >> 24), (uint8_t)(rate >> 16), (uint8_t)(rate >> 8),
                          (uint8_t)rate};
    int outcome;
    uint32_t nalen;
    if (ours) {
        for (int i = 0; i < ours; i++) memcpy(tcp + 20 + ours_at[i] + 4, rate_be, 4);
        nalen = alen;
        outcome = ABN_REPLACED;
    } else {
        uint32_t pad = (4 - keep % 4) % 4;
        nalen = keep + pad + ABN_OPTLEN;
        if (nalen > TCP_OPT_SPACE) return ABN_NO_ROOM;
        if (ihl + 20 + nalen > cap) return ABN_NO_ROOM;
        uint8_t *a = tcp + 20;
        memset(a + keep, 1, pad);
        uint8_t opt[ABN_OPTLEN] = {ABN_KIND, ABN_OPTLEN, ABN_EXID >> 8, ABN_EXID & 0xff,
                                   rate_be[0], rate_be[1], rate_be[2], rate_be[3]};
        memcpy(a + keep + pad, opt, ABN_OPTLEN);
        outcome = ABN_WRITTEN;
    }
    uint32_t seglen = 20 + nalen;
    tcp[12] = (uint8_t)(((seglen / 4) << 4) | (tcp[12] & 0x0f));
    tcp[16] = tcp[17] = 0;
    uint32_t acc = ones_sum(pkt + 12, 8, 0) + 6 + seglen; /* pseudo-header */
    uint16_t csum = (uint16_t)~fold(ones_sum(tcp, seglen, acc));
    tcp[16] = (uint8_t)(csum >> 8);
    tcp[17] = (uint8_t)csum;
    uint32_t nlen = ihl + seglen;
    pkt[2] = (uint8_t)(nlen >> 8);
    pkt[3] = (uint8_t)nlen;
    pkt[10] = pkt[11] = 0;
    uint16_t ipsum = (uint16_t)~fold(ones_sum(pkt, ihl, 0));
    pkt[10] = (uint8_t)(ipsum >> 8);
    pkt[11] = (uint8_t)ipsum;
    *newlen = nlen;
    return outcome;
}

/* ---------------------------------------------------------------- ABN flow accounting */
/*
 * What the shim's per-packet loop keeps per flow between two periods T, and the rate it
 * writes back: per data direction (the sender's address and port first) the payload,
 * packets, wire bytes and ACKs seen since the last take, and the rate Python's allocator
 * set. Python's abn.flows.FlowTable stays the flow table of the paper (timers, declared
 * sizes, expiry decisions); this is the per-packet half it reads every period. Open
 * addressing with linear probing and backward-shift deletion; `max` flows at most (the
 * table never holds more than half its slots), so its memory is bounded.
 */
typedef struct {
    uint32_t saddr, daddr;
    uint16_t sport, dport;
    uint8_t used, fin, has_rate;
    uint32_t rate_kbps;
    uint64_t payload, pkts, wire, acks;
    int64_t last_data_ns;
} fent_t;

typedef struct {
    fent_t *t;
    uint32_t cap, n, max;
    uint64_t nontcp_bytes, ctrl_bytes, untracked_pkts, untracked_bytes, no_rate;
} ftab_t;

static int ftab_init(ftab_t *f, uint32_t max_flows) {
    memset(f, 0, sizeof(*f));
    uint32_t cap = 16;
    while (cap < 2 * max_flows) cap <<= 1;
    f->t = calloc(cap, sizeof(fent_t));
    if (!f->t) return -1;
    f->cap = cap;
    f->max = max_flows;
    return 0;
}

static inline uint32_t fhash(uint32_t sa, uint32_t da, uint16_t sp, uint16_t dp) {
    uint64_t h = ((uint64_t)sa << 32 | da) * 0x9e3779b97f4a7c15ULL;
    h ^= ((uint64_t)sp << 16 | dp) * 0xbf58476d1ce4e5b9ULL;
    return (uint32_t)(h >> 32);
}

static fent_t *ftab_find(ftab_t *f, uint32_t sa, uint32_t da, uint16_t sp, uint16_t dp,
                         int insert) {
    uint32_t m = f->cap - 1, i = fhash(sa, da, sp, dp) & m;
    for (;;) {
        fent_t *e = &f->t[i];
        if (!e->used) {
            if (!insert || f->n >= f->max) return NULL;
            memset(e, 0, sizeof(*e));
            e->used = 1;
            e->saddr = sa; e->daddr = da; e->sport = sp; e->dport = dp;
            f->n++;
            return e;
        }
        if (e->saddr == sa && e->daddr == da && e->sport == sp && e->dport == dp) return e;
        i = (i + 1) & m;
    }
}

static void ftab_delete_at(ftab_t *f, uint32_t i) {
    uint32_t m = f->cap - 1, j = i;
    f->t[i].used = 0;
    f->n--;
    for (;;) { /* backward-shift: move later entries of the run into the hole */
        j = (j + 1) & m;
        if (!f->t[j].used) return;
        uint32_t home = fhash(f->t[j].saddr, f->t[j].daddr, f->t[j].sport, f->t[j].dport) & m;
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            f->t[i] = f->t[j];
            f->t[j].used = 0;
            i = j;
        }
    }
}

/* Account one packet (copied bytes `pkt`, `caplen` of them). For a pure ACK, returns the
 * data flow it acknowledges (or NULL) and sets *pure_ack. `counted` says whether the
 * packet leaves on the governed link (so it uses the capacity being shared): only then
 * do its bytes count (data per flow, non-TCP, control); a packet going the other way
 * (the ACKs returning to senders) is only looked up, for its flow's rate. */
static fent_t *ftab_account(ftab_t *f, const uint8_t *pkt, uint32_t caplen, int64_t now,
                            int counted, int *pure_ack) {
    *pure_ack = 0;
    if (caplen < 20 || pkt[0] >> 4 != 4) return NULL;
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4, wire = (uint32_t)(pkt[2] << 8 | pkt[3]);
    if (ihl < 20 || wire < ihl) return NULL;
    if (pkt[9] != 6) { if (counted) f->nontcp_bytes += wire; return NULL; }
    if (caplen < ihl + 20 || wire < ihl + 20 || ((pkt[6] << 8 | pkt[7]) & 0x1fff)) return NULL;
    const uint8_t *tcp = pkt + ihl;
    uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || ihl + doff > wire) return NULL;
    uint32_t sa, da;
    memcpy(&sa, pkt + 12, 4);
    memcpy(&da, pkt + 16, 4);
    uint16_t sp = (uint16_t)(tcp[0] << 8 | tcp[1]), dp = (uint16_t)(tcp[2] << 8 | tcp[3]);
    uint8_t flags = tcp[13];
    uint32_t payload = wire - ihl - doff;
    if ((flags & 0x10) && !(flags & 0x07) && payload == 0) {
        *pure_ack = 1;
        if (counted) f->ctrl_bytes += wire;
        fent_t *e = ftab_find(f, da, sa, dp, sp, 0); /* the data flow: reverse key */
        if (e) e->acks++;
        return e;
    }
    if (!counted) return NULL;
    fent_t *e = ftab_find(f, sa, da, sp, dp, 1);
    if (!e) { f->untracked_pkts++; f->untracked_bytes += wire; return NULL; }
    e->payload += payload;
    e->pkts++;
    e->wire += wire;
    e->last_data_ns = now;
    if (flags & 0x05) e->fin = 1;
    return e;
}

/* A copy of the table for Python, taken (and the period reset, idle flows dropped) by
 * whoever owns the table: the loop thread for a lane, the caller for an AbnTable. */
struct fsnap {
    fent_t *flows;
    uint32_t n;
    uint64_t nontcp_bytes, ctrl_bytes, untracked_pkts, untracked_bytes, no_rate;
    uint32_t tracked;
};
struct frate { uint32_t sa, da; uint16_t sp, dp; uint32_t kbps; };

static struct fsnap *ftab_snapshot(ftab_t *f, int64_t now, int64_t idle) {
    struct fsnap *sn = calloc(1, sizeof(*sn));
    if (!sn) return NULL;
    sn->flows = malloc((f->n ? f->n : 1) * sizeof(fent_t));
    if (!sn->flows) { free(sn); return NULL; }
    for (uint32_t i = 0; i < f->cap; i++) {
        fent_t *e = &f->t[i];
        if (!e->used) continue;
        sn->flows[sn->n++] = *e;
        e->payload = e->pkts = e->wire = e->acks = 0;
    }
    sn->nontcp_bytes = f->nontcp_bytes; sn->ctrl_bytes = f->ctrl_bytes;
    sn->untracked_pkts = f->untracked_pkts; sn->untracked_bytes = f->untracked_bytes;
    sn->no_rate = f->no_rate; sn->tracked = f->n;
    f->nontcp_bytes = f->ctrl_bytes = f->untracked_pkts = f->untracked_bytes = f->no_rate = 0;
    for (uint32_t i = 0; i < f->cap;) { /* drop idle flows (deletion may shift into i) */
        fent_t *e = &f->t[i];
        if (e->used && now - e->last_data_ns > idle) { ftab_delete_at(f, i); continue; }
        i++;
    }
    return sn;
}

static uint32_t ftab_set_rates(ftab_t *f, const struct frate *r, uint32_t n) {
    for (uint32_t i = 0; i < f->cap; i++) f->t[i].has_rate = 0;
    uint32_t missing = 0;
    for (uint32_t k = 0; k < n; k++) {
        fent_t *e = ftab_find(f, r[k].sa, r[k].da, r[k].sp, r[k].dp, 0);
        if (!e) { missing++; continue; }
        e->rate_kbps = r[k].kbps;
        e->has_rate = 1;
    }
    return missing;
}

/* ---------------------------------------------------------------- lanes */

typedef int (*rewrite_fn)(void *ctx, uint8_t *pkt, uint32_t len, uint32_t cap);
/* Returns the new length if it changed the packet (<= cap), 0 if it left it alone. */

typedef struct {
    int index;
    uint16_t queue_num;
    int gso;
    struct mnl_socket *nl;
    int fd;
    sched_t s;
    char *vbuf;
    size_t vlen;
    uint32_t last_id;
    int have_id;
    rewrite_fn rewrite;
    void *rewrite_ctx;
    int abn;                  /* an ABN lane: pure ACKs get a rate written in */
    uint32_t abn_rate_kbps;   /* the fixed rate, or (with ftab) the current ACK's flow's */
    uint64_t abn_outcomes[ABN_OUTCOMES];
    ftab_t *ftab;             /* per-flow accounting and rates (set by the shim each T) */
    uint32_t abn_out_ifindex; /* the governed link's interface: only packets leaving on it
                                 count against its capacity (0: every packet counts) */
    /* a table operation from Python, done by the loop thread (which owns ftab) */
    volatile int abn_op;      /* 0 none, 1 snapshot, 2 set rates */
    int64_t op_now, op_idle;
    struct fsnap *op_snap;
    struct frate *op_rates;
    uint32_t op_nrates, op_missing;
    int closed;
    /* settings change from Python, applied by the loop thread (which owns the lane) */
    volatile int pending;
    int64_t p_delay_ns, p_jitter_ns;
    double p_loss;
    int p_reorder, p_gso, p_rc, p_errno;
} lane_t;

/* The rewrite hook of an ABN lane (whole packets up to ABN_COPY_RANGE bytes are copied;
 * a longer one arrives truncated, fails the length check and passes unchanged). */
#define ABN_COPY_RANGE 256
static int abn_hook(void *ctx, uint8_t *pkt, uint32_t len, uint32_t cap) {
    lane_t *l = ctx;
    uint32_t nlen;
    int r = abn_write_rate(pkt, len, cap, l->abn_rate_kbps, &nlen);
    l->abn_outcomes[r]++;
    return (r == ABN_WRITTEN || r == ABN_REPLACED) ? (int)nlen : 0;
}

static int vflush(lane_t *l) {
    if (!l->vlen) return 0;
    ssize_t r = mnl_socket_sendto(l->nl, l->vbuf, l->vlen);
    l->vlen = 0;
    if (r < 0) { l->s.c.verdict_errors++; return -1; }
    return 0;
}

static void vput(lane_t *l, int type, uint32_t pid, int verdict, const uint8_t *pkt, uint32_t len) {
    size_t need = MNL_ALIGN(sizeof(struct nlmsghdr) + sizeof(struct nfgenmsg) + 64 + len);
    if (l->vlen + need > VBUF_SZ) vflush(l);
    struct nlmsghdr *nlh = nfq_nlmsg_put(l->vbuf + l->vlen, type, l->queue_num);
    nfq_nlmsg_verdict_put(nlh, (int)pid, verdict);
    if (pkt) nfq_nlmsg_verdict_put_pkt(nlh, pkt, len);
    l->vlen += MNL_ALIGN(nlh->nlmsg_len);
}

static void emit_batch(void *ctx, uint32_t last, int n) {
    (void)n;
    vput((lane_t *)ctx, NFQNL_MSG_VERDICT_BATCH, last, NF_ACCEPT, NULL, 0);
}

static void emit_single(void *ctx, item_t *it) {
    vput((lane_t *)ctx, NFQNL_MSG_VERDICT, it->pid, NF_ACCEPT, it->pkt, it->len);
}

static void lane_release(lane_t *l, int64_t now) {
    emit_t e = {emit_batch, emit_single, l};
    sched_due(&l->s, now, &e);
}

/* Send a config message and wait for the kernel's ack, so errors (queue taken, no
 * permission) surface here with their errno. */
static void lane_handle_packet(lane_t *l, const struct nlmsghdr *nlh, int64_t now);

static int config_data_cb(const struct nlmsghdr *nlh, void *data) {
    /* a packet that arrived while we wait for a config ack: schedule it as usual */
    if ((nlh->nlmsg_type & 0xff) == NFQNL_MSG_PACKET) lane_handle_packet(data, nlh, mono_ns());
    return MNL_CB_OK;
}

static int nl_config(lane_t *l, struct nlmsghdr *nlh) {
    static uint32_t seq = 1; /* shared by every loop thread of the process */
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED);
    if (mnl_socket_sendto(l->nl, nlh, nlh->nlmsg_len) < 0) return -1;
    char buf[8192];
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(l->nl, buf, sizeof(buf));
        if (n < 0) return -1;
        int r = mnl_cb_run(buf, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(l->nl),
                           config_data_cb, l);
        if (r == MNL_CB_ERROR) return -1;
        if (r == MNL_CB_STOP) return 0;
        /* MNL_CB_OK: only packet messages so far; keep reading for the ack */
    }
}

static int lane_set_flags(lane_t *l, int gso) {
    char buf[8192];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, l->queue_num);
    uint32_t mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN;
    uint32_t flags = NFQA_CFG_F_FAIL_OPEN | (gso ? NFQA_CFG_F_GSO : 0);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(mask));
    if (nl_config(l, nlh) < 0) return -1;
    l->gso = gso;
    return 0;
}

static int lane_open(lane_t *l, int netns_fd, int copy_range) {
    int orig = -1, rc = -1, saved = 0, fl = 0;
    char buf[8192];
    struct nlmsghdr *nlh;
    if (netns_fd >= 0) {
        orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (orig < 0) return -1;
        if (setns(netns_fd, CLONE_NEWNET) < 0) { saved = errno; close(orig); errno = saved; return -1; }
    }
    l->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (netns_fd >= 0) {
        saved = errno;
        if (setns(orig, CLONE_NEWNET) < 0) abort(); /* cannot go on in the wrong namespace */
        close(orig);
        errno = saved;
    }
    if (!l->nl) return -1;
    if (mnl_socket_bind(l->nl, 0, MNL_SOCKET_AUTOPID) < 0) goto out;
    l->fd = mnl_socket_get_fd(l->nl);
    /* config replies are read blocking; the packet path is non-blocking */
    fl = fcntl(l->fd, F_GETFL);
    fcntl(l->fd, F_SETFL, fl & ~O_NONBLOCK);
    int one = 1, rcv = RCVBUF;
    setsockopt(l->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv));
    /* Overflow is detected from gaps in packet ids (fail-open packets consume an id). */
    mnl_socket_setsockopt(l->nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, l->queue_num);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    if (nl_config(l, nlh) < 0) goto out;
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, l->queue_num);
    nfq_nlmsg_cfg_put_params(nlh, copy_range ? NFQNL_COPY_PACKET : NFQNL_COPY_META,
                             copy_range);
    if (nl_config(l, nlh) < 0) goto out;
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, l->queue_num);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, QUEUE_MAXLEN);
    if (nl_config(l, nlh) < 0) goto out;
    if (lane_set_flags(l, l->gso) < 0) goto out;
    fcntl(l->fd, F_SETFL, fl | O_NONBLOCK);
    rc = 0;
out:
    if (rc < 0) {
        saved = errno;
        mnl_socket_close(l->nl);
        l->nl = NULL;
        errno = saved;
    }
    return rc;
}

static void lane_handle_packet(lane_t *l, const struct nlmsghdr *nlh, int64_t now) {
    struct nlattr *attr[NFQA_MAX + 1] = {0};
    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) return;
    const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    uint32_t pid = ntohl(ph->packet_id);
    if (l->have_id) {
        uint32_t gap = pid - l->last_id - 1; /* ids the kernel used but never delivered */
        if (gap && gap < 0x80000000u) l->s.c.overflow += gap;
    }
    l->last_id = pid;
    l->have_id = 1;
    uint8_t *copy = NULL;
    uint32_t clen = 0;
    int skip = 0;
    if (l->ftab && attr[NFQA_PAYLOAD]) {
        /* every packet is counted (headers suffice); only an ACK whose flow has a rate
         * is rewritten, with that rate */
        int pure, counted = !l->abn_out_ifindex ||
            (attr[NFQA_IFINDEX_OUTDEV] &&
             ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_OUTDEV])) == l->abn_out_ifindex);
        fent_t *e = ftab_account(l->ftab, mnl_attr_get_payload(attr[NFQA_PAYLOAD]),
                                 mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]), now, counted,
                                 &pure);
        if (!pure) { l->abn_outcomes[ABN_NOT_PURE_ACK]++; skip = 1; }
        else if (!e || !e->has_rate) { l->ftab->no_rate++; skip = 1; }
        else l->abn_rate_kbps = e->rate_kbps;
    }
    if (skip) {
        /* counted above */
    } else if (l->rewrite && attr[NFQA_PAYLOAD] && l->abn && attr[NFQA_CAP_LEN] &&
        ntohl(mnl_attr_get_u32(attr[NFQA_CAP_LEN])) > mnl_attr_get_payload_len(attr[NFQA_PAYLOAD])) {
        /* only the first ABN_COPY_RANGE bytes came: too long to be a pure ACK */
        l->abn_outcomes[ABN_NOT_PURE_ACK]++;
    } else if (l->rewrite && attr[NFQA_PAYLOAD]) {
        uint8_t *data = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
        uint32_t len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
        uint32_t cap = len + 64;
        if (l->s.held_bytes + cap <= HELD_BYTES_LIMIT && (copy = malloc(cap))) {
            memcpy(copy, data, len);
            uint32_t nlen = (uint32_t)l->rewrite(l->rewrite_ctx, copy, len, cap);
            if (nlen) { clen = nlen; l->s.c.rewritten++; }
            else { free(copy); copy = NULL; }
        } else {
            l->s.c.rewrite_skipped++;
        }
    }
    int r = sched_admit(&l->s, pid, now, copy, clen);
    if (r <= 0) {
        free(copy);
        vput(l, NFQNL_MSG_VERDICT, pid, NF_DROP, NULL, 0);
    }
}

/* ---------------------------------------------------------------- the loop */

typedef struct {
    PyObject_HEAD
    lane_t **lanes;
    int nlanes, cap;
    int epfd;
    int ctl_fd;
    int wake_fd;              /* eventfd: stop() wakes the loop thread through it */
    volatile int stop;
    pthread_t thread;
    int thread_running;
    int rt_priority, rt_ok;
    int cpu, cpu_ok;          /* CPU the loop thread is pinned to (-1: none) */
    int64_t lead_ns;
    int64_t wake_arrival_ns; /* estimated arrival of the packets that woke the loop, or 0 */
    int64_t spin_budget_ns, spin_refill_ns, spin_ns;
    uint64_t wakeups;
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    char *rbuf;
    size_t rbufsz;
} LoopObject;

static void loop_drain(LoopObject *self, lane_t *l) {
    int total = 0;
    while (total < MAX_DRAIN) {
        int n = recvmmsg(l->fd, self->msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) break;
        int64_t now = mono_ns();
        if (self->wake_arrival_ns) {
            /* these packets woke a sleeping loop: they arrived a wake-up latency ago */
            now = self->wake_arrival_ns;
            self->wake_arrival_ns = 0;
        }
        for (int i = 0; i < n; i++) {
            size_t len = self->msgs[i].msg_len;
            const struct nlmsghdr *nlh = (const struct nlmsghdr *)self->iov[i].iov_base;
            int rem = (int)len;
            while (mnl_nlmsg_ok(nlh, rem)) {
                if (nlh->nlmsg_type == NLMSG_ERROR) {
                    const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
                    if (err->error) l->s.c.verdict_errors++;
                } else if ((nlh->nlmsg_type & 0xff) == NFQNL_MSG_PACKET) {
                    lane_handle_packet(l, nlh, now);
                }
                nlh = mnl_nlmsg_next(nlh, &rem);
            }
        }
        total += n;
        if (n < RECV_BATCH) break;
    }
}

static int64_t loop_next(LoopObject *self) {
    int64_t t = INT64_MAX;
    for (int i = 0; i < self->nlanes; i++) {
        lane_t *l = self->lanes[i];
        if (l->closed) continue;
        int64_t n = sched_next(&l->s);
        if (n < t) t = n;
    }
    return t;
}

static void loop_release(LoopObject *self, int64_t now) {
    for (int i = 0; i < self->nlanes; i++) {
        lane_t *l = self->lanes[i];
        if (l->closed) continue;
        lane_release(l, now);
        vflush(l);
    }
}

static void lane_apply(lane_t *l) {
    l->s.delay_ns = l->p_delay_ns;
    l->s.jitter_ns = l->p_jitter_ns;
    l->s.loss = l->p_loss;
    l->s.reorder = l->p_reorder;
    l->p_rc = 0;
    if (l->p_gso != l->gso) {
        int fl = fcntl(l->fd, F_GETFL);
        fcntl(l->fd, F_SETFL, fl & ~O_NONBLOCK);
        l->p_rc = lane_set_flags(l, l->p_gso);
        l->p_errno = errno;
        fcntl(l->fd, F_SETFL, fl);
    }
}

static void lane_abn_op(lane_t *l) {
    if (l->abn_op == 1) l->op_snap = ftab_snapshot(l->ftab, l->op_now, l->op_idle);
    else if (l->abn_op == 2) l->op_missing = ftab_set_rates(l->ftab, l->op_rates, l->op_nrates);
}

static void loop_apply_pending(LoopObject *self) {
    for (int i = 0; i < self->nlanes; i++) {
        lane_t *l = self->lanes[i];
        if (__atomic_load_n(&l->pending, __ATOMIC_ACQUIRE)) {
            lane_apply(l);
            __atomic_store_n(&l->pending, 0, __ATOMIC_RELEASE);
        }
        if (__atomic_load_n(&l->abn_op, __ATOMIC_ACQUIRE)) {
            lane_abn_op(l);
            __atomic_store_n(&l->abn_op, 0, __ATOMIC_RELEASE);
        }
    }
}

/* Wait up to `timeout_ns` for packets or the control fd; 1 if control is readable.
 * *nev is the number of ready fds (0: the timeout expired). */
static int loop_poll(LoopObject *self, int64_t timeout_ns, int *nev) {
    struct epoll_event ev[64];
    struct timespec ts = {timeout_ns / NS_PER_S, timeout_ns % NS_PER_S};
    int64_t before = timeout_ns > 0 ? mono_ns() : 0;
    int n = epoll_pwait2(self->epfd, ev, 64, &ts, NULL);
    int ctl = 0;
    if (n > 0 && before) {
        int64_t woke = mono_ns(), est = woke - self->lead_ns;
        self->wake_arrival_ns = est > before ? est : before;
    }
    for (int i = 0; i < n; i++) {
        uint32_t idx = ev[i].data.u32;
        if (idx == WAKE_TAG) {
            uint64_t v;
            if (read(self->wake_fd, &v, sizeof(v)) < 0) { /* nothing to do */ }
            ctl = 1;
            continue;
        }
        if (idx >= (uint32_t)self->nlanes) { ctl = 1; continue; }
        loop_drain(self, self->lanes[idx]);
    }
    self->wake_arrival_ns = 0;
    if (nev) *nev = n;
    return ctl || self->stop;
}

/* Run until `until_ns` (monotonic), until the control fd becomes readable, or until
 * stop is set. Called with self->mu held. */
static int loop_run_c(LoopObject *self, int64_t until_ns) {
    for (;;) {
        loop_apply_pending(self);
        int64_t now = mono_ns();
        loop_release(self, now);
        if (now >= until_ns) return 0;
        int64_t next = loop_next(self);
        int timed = next != INT64_MAX && next - self->lead_ns < until_ns;
        int64_t target = timed ? next - self->lead_ns : until_ns;
        int ctl, nev = 1;
        if (target > now) {
            ctl = loop_poll(self, target - now, &nev);
            if (timed && nev == 0) {
                /* a timer wake-up: learn how late they run (EWMA, capped) */
                int64_t w = mono_ns() - target;
                /* rises fast, falls slowly: tracks the upper part of the distribution
                 * (about its 90th percentile), since a late release cannot be undone */
                if (w > self->lead_ns) self->lead_ns += (w - self->lead_ns) / 4;
                else self->lead_ns -= (self->lead_ns - w) / 32;
                if (self->lead_ns > MAX_LEAD_NS) self->lead_ns = MAX_LEAD_NS;
                if (self->lead_ns < 0) self->lead_ns = 0;
                self->wakeups++;
            }
            /* spin the last stretch on the clock, still taking packets, within a budget:
             * on a saturated host wake-ups run late, the lead grows, and unbounded
             * spinning by an RT thread would take a core from the system it emulates */
            int64_t t0 = mono_ns();
            self->spin_budget_ns += (t0 - self->spin_refill_ns) * SPIN_SHARE_PCT / 100;
            if (self->spin_budget_ns > SPIN_BUDGET_MAX_NS) self->spin_budget_ns = SPIN_BUDGET_MAX_NS;
            self->spin_refill_ns = t0;
            while (!ctl && timed && (now = mono_ns()) < next && next - now <= 2 * MAX_LEAD_NS &&
                   now - t0 < self->spin_budget_ns)
                ctl = loop_poll(self, 0, NULL);
            self->spin_budget_ns -= mono_ns() - t0;
            self->spin_ns += mono_ns() - t0;
        } else if (timed && next > now) {
            /* inside the lead but out of spin budget: sleep to the release time itself */
            ctl = loop_poll(self, next - now, NULL);
        } else {
            ctl = loop_poll(self, 0, NULL);
        }
        if (ctl) {
            loop_release(self, mono_ns());
            return 1;
        }
    }
}

/* ---------------------------------------------------------------- Python: Loop */

static PyObject *NfqError;

static int Loop_init(LoopObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"control_fd", NULL};
    int ctl = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &ctl)) return -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    self->ctl_fd = ctl;
    self->cpu = -1;
    self->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->wake_fd < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    struct epoll_event wev = {.events = EPOLLIN, .data.u32 = WAKE_TAG};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wake_fd, &wev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (ctl >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = CTL_TAG};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, ctl, &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    self->rbufsz = META_BUFSZ;
    self->rbuf = malloc(RECV_BATCH * self->rbufsz);
    if (!self->rbuf) { PyErr_NoMemory(); return -1; }
    for (int i = 0; i < RECV_BATCH; i++) {
        self->iov[i].iov_base = self->rbuf + i * self->rbufsz;
        self->iov[i].iov_len = self->rbufsz;
        memset(&self->msgs[i], 0, sizeof(self->msgs[i]));
        self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

static void lane_close(lane_t *l) {
    if (l->closed) return;
    lane_release(l, INT64_MAX);
    vflush(l);
    if (l->nl) {
        char buf[8192];
        struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, l->queue_num);
        nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_UNBIND);
        mnl_socket_sendto(l->nl, nlh, nlh->nlmsg_len);
        mnl_socket_close(l->nl);
        l->nl = NULL;
    }
    sched_free(&l->s);
    if (l->ftab) { free(l->ftab->t); free(l->ftab); l->ftab = NULL; }
    free(l->vbuf);
    l->vbuf = NULL;
    l->closed = 1;
}

static void loop_stop_thread(LoopObject *self);

static void Loop_dealloc(LoopObject *self) {
    loop_stop_thread(self);
    for (int i = 0; i < self->nlanes; i++) {
        lane_close(self->lanes[i]);
        free(self->lanes[i]);
    }
    free(self->lanes);
    if (self->epfd > 0) close(self->epfd);
    if (self->wake_fd > 0) close(self->wake_fd);
    free(self->rbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int grow_rbuf(LoopObject *self, size_t sz) {
    if (sz <= self->rbufsz) return 0;
    char *n = malloc(RECV_BATCH * sz);
    if (!n) return -1;
    free(self->rbuf);
    self->rbuf = n;
    self->rbufsz = sz;
    for (int i = 0; i < RECV_BATCH; i++) {
        self->iov[i].iov_base = n + i * sz;
        self->iov[i].iov_len = sz;
    }
    return 0;
}

static int parse_settings(sched_t *s, PyObject *kw, int *gso) {
    if (!kw) return 0;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(kw, &pos, &key, &value)) {
        const char *k = PyUnicode_AsUTF8(key);
        if (!k) return -1;
        if (!strcmp(k, "delay_us") || !strcmp(k, "jitter_us")) {
            long long v = PyLong_AsLongLong(value);
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v < 0) { PyErr_Format(PyExc_ValueError, "%s must be >= 0", k); return -1; }
        } else if (!strcmp(k, "loss")) {
            double v = PyFloat_AsDouble(value);
            if (v == -1.0 && PyErr_Occurred()) return -1;
            if (!(v >= 0.0 && v <= 1.0)) { PyErr_SetString(PyExc_ValueError, "loss must be in [0, 1]"); return -1; }
        } else if (strcmp(k, "reorder") && strcmp(k, "gso")) {
            PyErr_Format(PyExc_ValueError, "unknown setting %R", key);
            return -1;
        }
    }
    /* all valid: apply */
    pos = 0;
    while (PyDict_Next(kw, &pos, &key, &value)) {
        const char *k = PyUnicode_AsUTF8(key);
        if (!strcmp(k, "delay_us")) s->delay_ns = PyLong_AsLongLong(value) * 1000;
        else if (!strcmp(k, "jitter_us")) s->jitter_ns = PyLong_AsLongLong(value) * 1000;
        else if (!strcmp(k, "loss")) s->loss = PyFloat_AsDouble(value);
        else if (!strcmp(k, "reorder")) s->reorder = PyObject_IsTrue(value);
        else if (!strcmp(k, "gso") && gso) *gso = PyObject_IsTrue(value);
    }
    return 0;
}

static PyObject *Loop_add_lane(LoopObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"queue_num", "netns_fd", "seed", "copy_packet", NULL};
    int queue_num, netns_fd = -1, copy_packet = 0;
    long long abn_rate = -1, abn_flows = 0, abn_ifindex = 0;
    unsigned long long seed = 1;
    PyObject *settings = NULL;
    if (!PyArg_ParseTuple(args, "i|O!", &queue_num, &PyDict_Type, &settings)) return NULL;
    (void)kwlist;
    if (kw) {
        PyObject *v;
        if ((v = PyDict_GetItemString(kw, "netns_fd"))) netns_fd = (int)PyLong_AsLong(v);
        if ((v = PyDict_GetItemString(kw, "seed"))) seed = PyLong_AsUnsignedLongLongMask(v);
        if ((v = PyDict_GetItemString(kw, "copy_packet"))) copy_packet = PyObject_IsTrue(v);
        if ((v = PyDict_GetItemString(kw, "abn_max_flows")) && v != Py_None) {
            abn_flows = PyLong_AsLongLong(v);
            if (!PyErr_Occurred() && (abn_flows < 1 || abn_flows > (1 << 22))) {
                PyErr_SetString(PyExc_ValueError, "abn_max_flows must be 1..4194304");
                return NULL;
            }
        }
        if ((v = PyDict_GetItemString(kw, "abn_out_ifindex")) && v != Py_None) {
            abn_ifindex = PyLong_AsLongLong(v);
            if (!PyErr_Occurred() && (abn_ifindex < 0 || abn_ifindex > 0x7fffffffLL)) {
                PyErr_SetString(PyExc_ValueError, "abn_out_ifindex must be an interface index");
                return NULL;
            }
        }
        if ((v = PyDict_GetItemString(kw, "abn_rate_kbps")) && v != Py_None) {
            abn_rate = PyLong_AsLongLong(v);
            if (!PyErr_Occurred() && (abn_rate < 0 || abn_rate > 0xffffffffLL)) {
                PyErr_SetString(PyExc_ValueError, "abn_rate_kbps must be 0..2^32-1");
                return NULL;
            }
        }
        if (PyErr_Occurred()) return NULL;
    }
    if (self->thread_running) {
        PyErr_SetString(PyExc_RuntimeError, "add lanes before start()");
        return NULL;
    }
    if (queue_num < 0 || queue_num > 65535) {
        PyErr_SetString(PyExc_ValueError, "queue_num must be 0..65535");
        return NULL;
    }
    lane_t *l = calloc(1, sizeof(lane_t));
    if (!l) return PyErr_NoMemory();
    sched_init(&l->s, seed);
    l->queue_num = (uint16_t)queue_num;
    l->gso = 1;
    if (parse_settings(&l->s, settings, &l->gso) < 0) { free(l); return NULL; }
    l->vbuf = malloc(VBUF_SZ);
    if (!l->vbuf) { free(l); return PyErr_NoMemory(); }
    if (abn_flows > 0) {
        l->ftab = malloc(sizeof(ftab_t));
        if (!l->ftab || ftab_init(l->ftab, (uint32_t)abn_flows) < 0) {
            free(l->ftab); free(l->vbuf); free(l);
            return PyErr_NoMemory();
        }
        if (abn_rate < 0) abn_rate = 0; /* unused: each ACK gets its flow's rate */
        l->abn_out_ifindex = (uint32_t)abn_ifindex;
    }
    if (abn_rate >= 0) {
        l->abn = 1;
        l->abn_rate_kbps = (uint32_t)abn_rate;
        l->rewrite = abn_hook;
        l->rewrite_ctx = l;
    }
    int copy_range = l->abn ? ABN_COPY_RANGE : copy_packet ? 0xffff : 0;
    if (copy_range && grow_rbuf(self, PKT_BUFSZ) < 0) { free(l->vbuf); free(l); return PyErr_NoMemory(); }
    if (lane_open(l, netns_fd, copy_range) < 0) {
        int e = errno;
        free(l->vbuf);
        free(l);
        PyErr_Format(NfqError, "cannot bind NFQUEUE %d: %s%s", queue_num, strerror(e),
                     e == EBUSY ? " (another process holds this queue)" :
                     e == EPERM ? " (needs root / CAP_NET_ADMIN)" : "");
        return NULL;
    }
    if (self->nlanes == self->cap) {
        int ncap = self->cap ? self->cap * 2 : 8;
        lane_t **n = realloc(self->lanes, ncap * sizeof(lane_t *));
        if (!n) { lane_close(l); free(l); return PyErr_NoMemory(); }
        self->lanes = n;
        self->cap = ncap;
    }
    l->index = self->nlanes;
    self->lanes[self->nlanes] = l;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)l->index};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
        int e = errno;
        lane_close(l);
        free(l);
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->nlanes++;
    return PyLong_FromLong(l->index);
}

static lane_t *get_lane(LoopObject *self, int i) {
    if (i < 0 || i >= self->nlanes || self->lanes[i]->closed) {
        PyErr_Format(PyExc_IndexError, "no open lane %d", i);
        return NULL;
    }
    return self->lanes[i];
}

/* Hand work to the loop thread through `flag` (it does the work between rounds and
 * clears the flag) and wait for it, with the GIL released; -1 with an error after 5 s. */
static int post_to_loop(LoopObject *self, volatile int *flag, int value) {
    __atomic_store_n(flag, value, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(self->wake_fd, &one, sizeof(one)) < 0) { /* the loop checks the flag anyway */ }
    Py_BEGIN_ALLOW_THREADS
    for (int k = 0; k < 200000 && __atomic_load_n(flag, __ATOMIC_ACQUIRE); k++) usleep(25);
    Py_END_ALLOW_THREADS
    if (__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(NfqError, "the loop thread did not answer in 5 s");
        return -1;
    }
    return 0;
}

static PyObject *Loop_configure(LoopObject *self, PyObject *args, PyObject *kw) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    lane_t *l = get_lane(self, i);
    if (!l) return NULL;
    sched_t want;
    want.delay_ns = l->s.delay_ns;
    want.jitter_ns = l->s.jitter_ns;
    want.loss = l->s.loss;
    want.reorder = l->s.reorder;
    int gso = l->gso;
    if (parse_settings(&want, kw, &gso) < 0) return NULL;
    l->p_delay_ns = want.delay_ns;
    l->p_jitter_ns = want.jitter_ns;
    l->p_loss = want.loss;
    l->p_reorder = want.reorder;
    l->p_gso = gso;
    if (!self->thread_running) {
        lane_apply(l);
    } else if (post_to_loop(self, &l->pending, 1) < 0) {
        return NULL;
    }
    if (l->p_rc < 0) return PyErr_Format(NfqError, "cannot change GSO flag: %s", strerror(l->p_errno));
    Py_RETURN_NONE;
}

static PyObject *counters_dict(const sched_t *s, int gso) {
    const counters_t *c = &s->c;
    PyObject *hist = PyList_New(NHIST);
    if (!hist) return NULL;
    for (int b = 0; b < NHIST; b++) PyList_SET_ITEM(hist, b, PyLong_FromUnsignedLongLong(c->late_hist[b]));
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:n,s:L,s:L,s:L,s:N,s:L,s:L,s:d,s:O,s:O}",
        "received", c->received, "dropped", c->dropped, "released", c->released,
        "late_over_1ms", c->late_over_1ms, "overflow", c->overflow,
        "verdict_errors", c->verdict_errors, "rewritten", c->rewritten,
        "rewrite_skipped", c->rewrite_skipped, "max_held", c->max_held,
        "held", (Py_ssize_t)sched_held(s), "late_max_us", c->late_max_ns / 1000,
        "late_sum_us", c->late_sum_ns / 1000,
        "period_late_max_us", c->period_late_max_ns / 1000, "late_hist", hist,
        "delay_us", s->delay_ns / 1000, "jitter_us", s->jitter_ns / 1000, "loss", s->loss,
        "reorder", s->reorder ? Py_True : Py_False, "gso", gso ? Py_True : Py_False);
}

static PyObject *Loop_stats(LoopObject *self, PyObject *args) {
    int i, reset = 0;
    if (!PyArg_ParseTuple(args, "i|p", &i, &reset)) return NULL;
    if (i < 0 || i >= self->nlanes) return PyErr_Format(PyExc_IndexError, "no lane %d", i);
    lane_t *l = self->lanes[i];
    /* Read while the loop thread runs: each counter is one aligned 64-bit word written
     * only by that thread, so a read is never torn; counters may be a few packets apart. */
    sched_t copy = l->s;
    if (reset)
        copy.c.period_late_max_ns = __atomic_exchange_n(&l->s.c.period_late_max_ns, 0,
                                                        __ATOMIC_RELAXED);
    PyObject *d = counters_dict(&copy, l->gso);
    if (d && l->abn) {
        PyObject *abn = PyDict_New();
        for (int k = 0; abn && k < ABN_OUTCOMES; k++) {
            PyObject *n = PyLong_FromUnsignedLongLong(l->abn_outcomes[k]);
            PyDict_SetItemString(abn, abn_outcome_names[k], n);
            Py_XDECREF(n);
        }
        PyObject *rate = PyLong_FromUnsignedLong(l->abn_rate_kbps);
        if (abn) PyDict_SetItemString(abn, "rate_kbps", rate);
        Py_XDECREF(rate);
        if (abn) { PyDict_SetItemString(d, "abn", abn); Py_DECREF(abn); }
    }
    return d;
}

static PyObject *Loop_run(LoopObject *self, PyObject *args) {
    double seconds;
    if (!PyArg_ParseTuple(args, "d", &seconds)) return NULL;
    int64_t until = mono_ns() + (int64_t)(seconds * 1e9);
    if (self->thread_running) {
        PyErr_SetString(PyExc_RuntimeError, "the loop runs in its own thread (start() was called)");
        return NULL;
    }
    int ctl;
    Py_BEGIN_ALLOW_THREADS
    ctl = loop_run_c(self, until);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ctl);
}

static void *loop_thread_main(void *arg) {
    LoopObject *self = arg;
    if (self->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(self->cpu, &set);
        self->cpu_ok = pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
    }
    if (self->rt_priority > 0) {
        struct sched_param sp = {.sched_priority = self->rt_priority};
        self->rt_ok = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0;
    }
    while (!self->stop) loop_run_c(self, INT64_MAX);
    return NULL;
}

static PyObject *Loop_start(LoopObject *self, PyObject *args) {
    int prio = 0, cpu = -1;
    if (!PyArg_ParseTuple(args, "|ii", &prio, &cpu)) return NULL;
    if (self->thread_running) Py_RETURN_NONE;
    self->stop = 0;
    self->rt_priority = prio;
    self->cpu = cpu;
    int rc = pthread_create(&self->thread, NULL, loop_thread_main, self);
    if (rc) { errno = rc; return PyErr_SetFromErrno(PyExc_OSError); }
    self->thread_running = 1;
    Py_RETURN_NONE;
}

static void loop_stop_thread(LoopObject *self) {
    if (!self->thread_running) return;
    self->stop = 1;
    uint64_t one = 1;
    if (write(self->wake_fd, &one, sizeof(one)) < 0) { /* the flag is enough */ }
    pthread_join(self->thread, NULL);
    self->thread_running = 0;
}

static PyObject *Loop_stop(LoopObject *self, PyObject *noargs) {
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS
    loop_stop_thread(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Loop_close_lane(LoopObject *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    lane_t *l = get_lane(self, i);
    if (!l) return NULL;
    if (self->thread_running) {
        PyErr_SetString(PyExc_RuntimeError, "stop() the loop thread before closing a lane");
        return NULL;
    }
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    lane_close(l);
    Py_RETURN_NONE;
}

static PyObject *Loop_close(LoopObject *self, PyObject *noargs) {
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS
    loop_stop_thread(self);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < self->nlanes; i++) {
        lane_t *l = self->lanes[i];
        if (!l->closed) {
            epoll_ctl(self->epfd, EPOLL_CTL_DEL, l->fd, NULL);
            lane_close(l);
        }
    }
    Py_RETURN_NONE;
}

static struct frate *parse_rates(PyObject *rates, uint32_t *n);
static PyObject *snap_to_py(struct fsnap *sn);
static void snap_free(struct fsnap *sn);

/* Run an ABN table operation on a lane: by the loop thread when it runs (it owns the
 * table), else here. */
static int lane_abn_call(LoopObject *self, lane_t *l, int op) {
    if (!self->thread_running) {
        l->abn_op = op;
        lane_abn_op(l);
        l->abn_op = 0;
        return 0;
    }
    return post_to_loop(self, &l->abn_op, op);
}

static lane_t *get_abn_lane(LoopObject *self, int i) {
    lane_t *l = get_lane(self, i);
    if (l && !l->ftab) {
        PyErr_Format(PyExc_ValueError, "lane %d keeps no flow table (abn_max_flows)", i);
        return NULL;
    }
    return l;
}

static PyObject *Loop_abn_take(LoopObject *self, PyObject *args) {
    int i;
    double idle_s;
    if (!PyArg_ParseTuple(args, "id", &i, &idle_s)) return NULL;
    lane_t *l = get_abn_lane(self, i);
    if (!l) return NULL;
    l->op_now = mono_ns();
    l->op_idle = (int64_t)(idle_s * 1e9);
    l->op_snap = NULL;
    if (lane_abn_call(self, l, 1) < 0) return NULL;
    if (!l->op_snap) return PyErr_NoMemory();
    PyObject *out = snap_to_py(l->op_snap);
    snap_free(l->op_snap);
    l->op_snap = NULL;
    if (out) {
        PyObject *t = PyLong_FromLongLong(l->op_now);
        PyDict_SetItemString(out, "now_ns", t);
        Py_XDECREF(t);
    }
    return out;
}

static PyObject *Loop_abn_set_rates(LoopObject *self, PyObject *args) {
    int i;
    PyObject *rates;
    if (!PyArg_ParseTuple(args, "iO", &i, &rates)) return NULL;
    lane_t *l = get_abn_lane(self, i);
    if (!l) return NULL;
    uint32_t n;
    struct frate *r = parse_rates(rates, &n);
    if (!r) return NULL;
    l->op_rates = r;
    l->op_nrates = n;
    int rc = lane_abn_call(self, l, 2);
    free(r);
    l->op_rates = NULL;
    if (rc < 0) return NULL;
    return PyLong_FromUnsignedLong(l->op_missing);
}

static PyObject *Loop_timing(LoopObject *self, PyObject *noargs) {
    (void)noargs;
    return Py_BuildValue("{s:L,s:K,s:O,s:d,s:i}", "wake_lead_us", self->lead_ns / 1000,
                         "timer_wakeups", self->wakeups, "realtime",
                         self->rt_ok ? Py_True : Py_False, "spin_s", self->spin_ns / 1e9,
                         "cpu", self->cpu_ok ? self->cpu : -1);
}

static PyObject *Loop_lanes(LoopObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->nlanes);
}

static PyMethodDef Loop_methods[] = {
    {"add_lane", (PyCFunction)(void (*)(void))Loop_add_lane, METH_VARARGS | METH_KEYWORDS,
     "add_lane(queue_num, settings={}, *, netns_fd=-1, seed=1, copy_packet=False,\n"
     "abn_rate_kbps=None, abn_max_flows=None, abn_out_ifindex=None) -> lane index.\n"
     "With abn_rate_kbps, pure ACKs leave with that rate in their ABN option (the shim's\n"
     "rewrite, in C); with abn_max_flows, per flow: the lane keeps a flow table, and\n"
     "with abn_out_ifindex only packets leaving on that interface count against it.\n"
     "Binds NFQUEUE queue_num in the network namespace of netns_fd (an open /proc/PID/ns/net)."},
    {"configure", (PyCFunction)(void (*)(void))Loop_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(lane, **settings): delay_us, jitter_us, loss, reorder, gso; all or nothing."},
    {"stats", (PyCFunction)Loop_stats, METH_VARARGS,
     "stats(lane, reset_period=False) -> counters (cumulative; period_late_max_us resets)."},
    {"run", (PyCFunction)Loop_run, METH_VARARGS,
     "run(seconds) -> True if it returned early because the control fd is readable."},
    {"close_lane", (PyCFunction)Loop_close_lane, METH_VARARGS,
     "close_lane(lane): release every held packet, unbind the queue."},
    {"close", (PyCFunction)Loop_close, METH_NOARGS, "close(): stop the thread, close every lane."},
    {"start", (PyCFunction)Loop_start, METH_VARARGS,
     "start(rt_priority=0, cpu=-1): run the loop in its own thread (SCHED_FIFO at that\n"
     "priority if > 0, pinned to that CPU if >= 0);\n"
     "configure() and stats() stay callable from Python meanwhile."},
    {"stop", (PyCFunction)Loop_stop, METH_NOARGS, "stop(): end the loop thread (lanes stay open)."},
    {"timing", (PyCFunction)Loop_timing, METH_NOARGS, "timer wake-up lead and count."},
    {"abn_take", (PyCFunction)Loop_abn_take, METH_VARARGS,
     "abn_take(lane, idle_s) -> what the lane's flow table saw since the last take (as\n"
     "AbnTable.take, at the loop's clock); flows idle longer than idle_s are dropped"},
    {"abn_set_rates", (PyCFunction)Loop_abn_set_rates, METH_VARARGS,
     "abn_set_rates(lane, {(src, sport, dst, dport): kbps}) -> flows not found"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Loop_getset[] = {
    {"lanes", (getter)Loop_lanes, NULL, "number of lanes added", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abn._nfqloop.Loop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Many NFQUEUE lanes served by one compiled loop (see the module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_getset = Loop_getset,
};

/* ---------------------------------------------------------------- Python: Scheduler */

typedef struct {
    PyObject_HEAD
    sched_t s;
    PyObject *singles; /* scratch list while emitting */
    PyObject *batch;
} SchedObject;

static int Sched_init(SchedObject *self, PyObject *args, PyObject *kw) {
    unsigned long long seed = 1;
    if (!PyArg_ParseTuple(args, "|K", &seed)) return -1;
    sched_free(&self->s);
    sched_init(&self->s, seed);
    return parse_settings(&self->s, kw, NULL);
}

static void Sched_dealloc(SchedObject *self) {
    sched_free(&self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Sched_configure(SchedObject *self, PyObject *args, PyObject *kw) {
    (void)args;
    if (parse_settings(&self->s, kw, NULL) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Sched_admit(SchedObject *self, PyObject *args) {
    unsigned int pid;
    long long now;
    if (!PyArg_ParseTuple(args, "IL", &pid, &now)) return NULL;
    int r = sched_admit(&self->s, pid, now, NULL, 0);
    return PyBool_FromLong(r > 0);
}

static void py_batch(void *ctx, uint32_t last, int n) {
    (void)n;
    SchedObject *self = ctx;
    Py_XDECREF(self->batch);
    self->batch = PyLong_FromUnsignedLong(last);
}

static void py_single(void *ctx, item_t *it) {
    SchedObject *self = ctx;
    PyObject *v = PyLong_FromUnsignedLong(it->pid);
    if (v) { PyList_Append(self->singles, v); Py_DECREF(v); }
}

static PyObject *Sched_due(SchedObject *self, PyObject *args) {
    long long now;
    if (!PyArg_ParseTuple(args, "L", &now)) return NULL;
    self->singles = PyList_New(0);
    if (!self->singles) return NULL;
    self->batch = NULL;
    emit_t e = {py_batch, py_single, self};
    sched_due(&self->s, now, &e);
    PyObject *batch = self->batch ? self->batch : (Py_INCREF(Py_None), Py_None);
    PyObject *out = Py_BuildValue("(NN)", batch, self->singles);
    self->singles = self->batch = NULL;
    return out;
}

static PyObject *Sched_next_release(SchedObject *self, PyObject *noargs) {
    (void)noargs;
    int64_t t = sched_next(&self->s);
    if (t == INT64_MAX) Py_RETURN_NONE;
    return PyLong_FromLongLong(t);
}

static PyObject *Sched_counters(SchedObject *self, PyObject *noargs) {
    (void)noargs;
    return counters_dict(&self->s, 0);
}

static PyMethodDef Sched_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Sched_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(**settings)"},
    {"admit", (PyCFunction)Sched_admit, METH_VARARGS, "admit(pid, now_ns) -> False to drop"},
    {"due", (PyCFunction)Sched_due, METH_VARARGS,
     "due(now_ns) -> (highest id of a FIFO run released by one batch verdict or None, singles)"},
    {"next_release", (PyCFunction)Sched_next_release, METH_NOARGS, "next release time, ns"},
    {"counters", (PyCFunction)Sched_counters, METH_NOARGS, "counters"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SchedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abn._nfqloop.Scheduler",
    .tp_basicsize = sizeof(SchedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled loop's scheduling policy, without a kernel (for tests).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sched_init,
    .tp_dealloc = (destructor)Sched_dealloc,
    .tp_methods = Sched_methods,
};

/* ---------------------------------------------------------------- Python: AbnTable */

typedef struct {
    PyObject_HEAD
    ftab_t f;
} AbnTableObject;

static int AbnTable_init(AbnTableObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"max_flows", NULL};
    unsigned int max_flows = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|I", kwlist, &max_flows)) return -1;
    if (max_flows < 1 || max_flows > (1u << 22)) {
        PyErr_SetString(PyExc_ValueError, "max_flows must be 1..4194304");
        return -1;
    }
    free(self->f.t);
    if (ftab_init(&self->f, max_flows) < 0) { PyErr_NoMemory(); return -1; }
    return 0;
}

static void AbnTable_dealloc(AbnTableObject *self) {
    free(self->f.t);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* (packet, outcome) for Python: the rewritten copy, or the input object itself. */
static PyObject *rewrite_to_py(PyObject *packet, uint32_t rate) {
    Py_ssize_t len = PyBytes_GET_SIZE(packet);
    if (len > 65535) return Py_BuildValue("(Os)", packet, "malformed_ip");
    uint8_t buf[65535 + 64];
    memcpy(buf, PyBytes_AS_STRING(packet), (size_t)len);
    uint32_t nlen;
    int r = abn_write_rate(buf, (uint32_t)len, sizeof(buf), rate, &nlen);
    if (r != ABN_WRITTEN && r != ABN_REPLACED)
        return Py_BuildValue("(Os)", packet, abn_outcome_names[r]);
    return Py_BuildValue("(y#s)", (const char *)buf, (Py_ssize_t)nlen, abn_outcome_names[r]);
}

/* feed(packet, now_ns, counted=True) -> (packet, outcome): account it (its bytes only if
 * `counted`: it leaves on the governed link) and, for a pure ACK whose data
 * flow has a rate, write that rate ("no_rate" when it has none yet). */
static PyObject *AbnTable_feed(AbnTableObject *self, PyObject *args) {
    PyObject *packet;
    long long now;
    int counted = 1;
    if (!PyArg_ParseTuple(args, "SL|p", &packet, &now, &counted)) return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(packet);
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(packet);
    int pure;
    fent_t *e = ftab_account(&self->f, data, len > 65535 ? 65535 : (uint32_t)len, now,
                             counted, &pure);
    if (!pure) return Py_BuildValue("(Os)", packet, "not_pure_ack");
    if (!e || !e->has_rate) {
        self->f.no_rate++;
        return Py_BuildValue("(Os)", packet, "no_rate");
    }
    return rewrite_to_py(packet, e->rate_kbps);
}

static int parse_key(PyObject *key, uint32_t *sa, uint16_t *sp, uint32_t *da, uint16_t *dp) {
    const char *s, *d;
    int sport, dport;
    if (!PyArg_ParseTuple(key, "sisi", &s, &sport, &d, &dport)) return -1;
    struct in_addr a, b;
    if (inet_pton(AF_INET, s, &a) != 1 || inet_pton(AF_INET, d, &b) != 1 ||
        sport < 0 || sport > 65535 || dport < 0 || dport > 65535) {
        PyErr_Format(PyExc_ValueError, "bad flow key %R", key);
        return -1;
    }
    *sa = a.s_addr; *da = b.s_addr; *sp = (uint16_t)sport; *dp = (uint16_t)dport;
    return 0;
}

/* {(src, sport, dst, dport): kbps} -> an array (all checked before anything changes). */
static struct frate *parse_rates(PyObject *rates, uint32_t *n) {
    if (!PyDict_Check(rates)) { PyErr_SetString(PyExc_TypeError, "rates must be a dict"); return NULL; }
    Py_ssize_t cnt = PyDict_Size(rates), pos = 0;
    struct frate *out = malloc((cnt ? cnt : 1) * sizeof(*out));
    if (!out) { PyErr_NoMemory(); return NULL; }
    PyObject *k, *v;
    uint32_t i = 0;
    while (PyDict_Next(rates, &pos, &k, &v)) {
        struct frate *r = &out[i];
        if (!PyTuple_Check(k) || parse_key(k, &r->sa, &r->sp, &r->da, &r->dp) < 0) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "bad flow key %R", k);
            free(out);
            return NULL;
        }
        long long kb = PyLong_AsLongLong(v);
        if ((kb == -1 && PyErr_Occurred()) || kb < 0 || kb > 0xffffffffLL) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "rate %lld out of range", kb);
            free(out);
            return NULL;
        }
        r->kbps = (uint32_t)kb;
        i++;
    }
    *n = i;
    return out;
}

static PyObject *snap_to_py(struct fsnap *sn) {
    PyObject *flows = PyList_New(0);
    if (!flows) return NULL;
    for (uint32_t i = 0; i < sn->n; i++) {
        fent_t *e = &sn->flows[i];
        char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &e->saddr, a, sizeof(a));
        inet_ntop(AF_INET, &e->daddr, b, sizeof(b));
        PyObject *rate = e->has_rate ? PyLong_FromUnsignedLong(e->rate_kbps)
                                     : (Py_INCREF(Py_None), Py_None);
        PyObject *row = Py_BuildValue(
            "{s:(sisi),s:K,s:K,s:K,s:K,s:L,s:O,s:N}", "key", a, e->sport, b, e->dport,
            "payload", e->payload, "packets", e->pkts, "wire", e->wire, "acks", e->acks,
            "last_data_ns", e->last_data_ns, "fin", e->fin ? Py_True : Py_False, "rate_kbps", rate);
        if (!row || PyList_Append(flows, row) < 0) { Py_XDECREF(row); Py_DECREF(flows); return NULL; }
        Py_DECREF(row);
    }
    return Py_BuildValue("{s:N,s:K,s:K,s:K,s:K,s:K,s:I}", "flows", flows,
                         "non_tcp_bytes", sn->nontcp_bytes, "control_bytes", sn->ctrl_bytes,
                         "untracked_packets", sn->untracked_pkts,
                         "untracked_bytes", sn->untracked_bytes, "no_rate", sn->no_rate,
                         "tracked", sn->tracked);
}

static void snap_free(struct fsnap *sn) {
    if (sn) { free(sn->flows); free(sn); }
}

/* set_rates({(src, sport, dst, dport): kbps}) -> flows not found. Every other flow's rate
 * is cleared: the allocator speaks for all flows each period. */
static PyObject *AbnTable_set_rates(AbnTableObject *self, PyObject *args) {
    PyObject *rates;
    if (!PyArg_ParseTuple(args, "O", &rates)) return NULL;
    uint32_t n;
    struct frate *r = parse_rates(rates, &n);
    if (!r) return NULL;
    uint32_t missing = ftab_set_rates(&self->f, r, n);
    free(r);
    return PyLong_FromUnsignedLong(missing);
}

/* take(now_ns, idle_ns) -> {"flows": [...], period totals}: what was seen since the last
 * take (counters reset), then flows idle for longer than idle_ns are dropped. */
static PyObject *AbnTable_take(AbnTableObject *self, PyObject *args) {
    long long now, idle;
    if (!PyArg_ParseTuple(args, "LL", &now, &idle)) return NULL;
    struct fsnap *sn = ftab_snapshot(&self->f, now, idle);
    if (!sn) return PyErr_NoMemory();
    PyObject *out = snap_to_py(sn);
    snap_free(sn);
    return out;
}

static PyObject *AbnTable_len(AbnTableObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(self->f.n);
}

static PyMethodDef AbnTable_methods[] = {
    {"feed", (PyCFunction)AbnTable_feed, METH_VARARGS,
     "feed(packet, now_ns, counted=True) -> (packet, outcome): account a packet (its bytes\n"
     "only if counted: it leaves on the governed link); rewrite a pure ACK"},
    {"set_rates", (PyCFunction)AbnTable_set_rates, METH_VARARGS,
     "set_rates({(src, sport, dst, dport): kbps}) -> flows not found; clears the others"},
    {"take", (PyCFunction)AbnTable_take, METH_VARARGS,
     "take(now_ns, idle_ns) -> per-flow and period counters since the last take"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef AbnTable_getset[] = {
    {"tracked", (getter)AbnTable_len, NULL, "flows held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AbnTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abn._nfqloop.AbnTable",
    .tp_basicsize = sizeof(AbnTableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The shim's per-packet flow accounting and rates, without a kernel.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)AbnTable_init,
    .tp_dealloc = (destructor)AbnTable_dealloc,
    .tp_methods = AbnTable_methods,
    .tp_getset = AbnTable_getset,
};

static PyObject *mod_uniforms(PyObject *m, PyObject *args) {
    (void)m;
    unsigned long long seed;
    int n;
    if (!PyArg_ParseTuple(args, "Ki", &seed, &n)) return NULL;
    PyObject *out = PyList_New(n);
    uint64_t s = seed;
    for (int i = 0; i < n; i++) PyList_SET_ITEM(out, i, PyFloat_FromDouble(rng_uniform(&s)));
    return out;
}

static PyObject *mod_write_rate(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *packet;
    long long rate;
    if (!PyArg_ParseTuple(args, "SL", &packet, &rate)) return NULL;
    if (rate < 0 || rate > 0xffffffffLL)
        return PyErr_Format(PyExc_ValueError, "rate %lld kbit/s is outside 0..%u", rate, 0xffffffffu);
    return rewrite_to_py(packet, (uint32_t)rate);
}

static PyMethodDef mod_methods[] = {
    {"uniforms", mod_uniforms, METH_VARARGS, "uniforms(seed, n): the first n draws (tests)"},
    {"write_rate", mod_write_rate, METH_VARARGS,
     "write_rate(packet, rate_kbps) -> (packet, outcome): the compiled ABN rewrite, the\n"
     "input object itself unless the outcome is 'written' or 'replaced'"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "abn._nfqloop",
    "Compiled NFQUEUE loop: many lanes, per-lane delay/jitter/loss, batched verdicts.",
    -1, mod_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__nfqloop(void) {
    if (PyType_Ready(&LoopType) < 0 || PyType_Ready(&SchedType) < 0 ||
        PyType_Ready(&AbnTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    NfqError = PyErr_NewException("abn._nfqloop.NfqError", PyExc_OSError, NULL);
    Py_INCREF(&LoopType);
    Py_INCREF(&SchedType);
    PyModule_AddObject(m, "Loop", (PyObject *)&LoopType);
    PyModule_AddObject(m, "Scheduler", (PyObject *)&SchedType);
    Py_INCREF(&AbnTableType);
    PyModule_AddObject(m, "AbnTable", (PyObject *)&AbnTableType);
    PyModule_AddObject(m, "NfqError", NfqError);
    PyModule_AddIntConstant(m, "LATE_US", LATE_NS / 1000);
    PyModule_AddIntConstant(m, "MAX_LEAD_US", MAX_LEAD_NS / 1000);
    PyObject *edges = PyList_New(NHIST - 1);
    for (int i = 0; i < NHIST - 1; i++) PyList_SET_ITEM(edges, i, PyLong_FromLongLong(hist_edges_ns[i] / 1000));
    PyModule_AddObject(m, "LATE_HIST_EDGES_US", edges);
    return m;
}
