// ubt: registers and user stack bytes at a uprobe, into a ring buffer.
//
// Compiled by bcc with one -D setting, and the bytecode cached (bpf_progs/objcache.py):
//   STACK_CAP      most stack bytes copied per hit (a multiple of 4096, at most 131072)
//   VARS_SIZE      (optional) bytes of probe values per record: the program text then ends with
//                  a generated fetch_vars() (bpf_progs/fetch_gen.py) that fills them
// The sizes of `hits` and `want` below are placeholders: the loader sets them per run (ring
// buffer size; one `want` entry per probe). One program serves every probe: it is attached
// through uprobe_multi links whose cookie is the probe's index (bpf_get_attach_cookie), and
// links made for one process filter by pid in the kernel.
//
// The copy is page-aligned: the first chunk runs from sp to the next page boundary, the rest are
// whole pages, so a failing chunk means that page is not mapped: the end of the stack. That end is
// remembered per thread, so later hits read exactly up to it and never fail again.

#include <uapi/linux/ptrace.h>

#define PAGE 4096
#define barrier_var(var) asm volatile("" : "+r"(var))

struct hit_head {
    u64 time_ns;
    u32 pid;
    u32 tid;
    u32 probe;        // probe index (the attach cookie)
    u32 stack_len;    // bytes copied from sp upward
    u32 flags;        // HIT_TRUNCATED: stopped by the size, not by the end of the stack
    u32 pad;
    char comm[16];
    struct pt_regs regs;
#ifdef VARS_SIZE
    u8 vars[VARS_SIZE];   // values read at the hit, laid out per probe by fetch_gen.py
#endif
};

#ifdef VARS_SIZE
static __always_inline void fetch_vars(struct pt_regs *ctx, u32 probe, u8 *out);
#endif

#define HIT_TRUNCATED 1

BPF_RINGBUF_OUTPUT(hits, 1);
BPF_ARRAY(want, u32, 1);          // bytes to copy per probe, learnt in user space
BPF_ARRAY(lost, u64, 1);                // ring buffer full
BPF_TABLE("lru_hash", u32, u64, stack_end, 65536);  // tid -> first unmapped address above sp
BPF_TABLE("lru_hash", u32, u8, seen, 16384);         // processes that had a hit already
BPF_PERCPU_ARRAY(since_wake, u32, 1);

#define WAKE_EVERY 64

// bcc rewrites map calls only outside macros: these wrappers are what EMIT calls (inlined, the
// reservation size is still a constant the verifier sees).
static __always_inline void *reserve(u32 size) { return hits.ringbuf_reserve(size); }
static __always_inline void submit(void *h, u64 flags) { hits.ringbuf_submit(h, flags); }
static __always_inline int output(void *h, u64 size, u64 flags)
{
    return hits.ringbuf_output(h, size, flags);
}
static __always_inline void remember_end(u32 tid, u64 end) { stack_end.update(&tid, &end); }

// The copy into `h->stack`, at most N bytes from sp up to `limit`: declares `copied` (bytes
// copied) and `flags` (HIT_TRUNCATED when the limit, not the end of the stack, stopped it).
// `sp` is read once by capture() and passed down: a second read of ctx->sp next to
// fetch_vars' reads of ctx can come out of clang as a load through a moved ctx pointer,
// which the verifier refuses.
#define COPY_STACK(h, N)                                                                       \
    u64 copied = 0, addr = sp;                                                                  \
    u32 flags = known_end && sp + limit >= known_end ? 0 : HIT_TRUNCATED;                       \
    for (int i = 0; i < (N) / PAGE + 1; i++) {                                                  \
        if (copied >= limit)                                                                    \
            break;                                                                              \
        u64 len = PAGE - (addr & (PAGE - 1));                                                   \
        if (len > limit - copied)                                                               \
            len = limit - copied;                                                               \
        /* the verifier's proof the write fits: copied <= N and 0 < len <= PAGE; the        */ \
        /* barriers stop clang from dropping checks it can prove but the verifier cannot   */ \
        barrier_var(copied);                                                                    \
        barrier_var(len);                                                                       \
        if (copied > (N) || len == 0 || len > PAGE)                                             \
            break;                                                                              \
        if (bpf_probe_read_user((h)->stack + copied, len, (void *)addr) != 0) {                 \
            u64 page_end = addr;   /* this page is unmapped: the stack ends here */             \
            remember_end(tid, page_end);                                                        \
            flags = 0;                                                                          \
            break;                                                                              \
        }                                                                                       \
        copied += len;                                                                          \
        addr += len;                                                                            \
    }

// Most hits are copied into a per-CPU buffer and written to the ring with their exact size
// (bpf_ringbuf_output), so records lie end to end: measured at bench_hit, the program costs
// 1.2 us per hit instead of 1.4-1.6 us (bpftrace's 1.0-1.2 us), and the 32 MB ring holds ~2.5x
// more records. A per-CPU value is limited to 32 KB, hence SCRATCH. The buffer is taken with an
// atomic exchange: a program preempted while using it (on a preemptible kernel) makes the
// other hits on that CPU reserve their record instead.
#define SCRATCH 16384
struct scratch { u64 busy; struct hit_head head; u8 stack[SCRATCH + PAGE]; /* as EMIT's */ };
BPF_PERCPU_ARRAY(scratch_buf, struct scratch, 1);

// Larger hits, and hits while the buffer is busy, reserve a record in the ring and copy into
// it. A reservation must have a constant size, so records come in size classes: the smallest
// class holding `limit` bytes is reserved (a hit that needs 6 KB takes 8 KB of ring), each
// with its own copy of the copy loop (EMIT below).
#define EMIT(N)                                                                                \
struct hit_##N { struct hit_head head; u8 stack[N + PAGE]; /* spare page: loop bound */ };    \
static __always_inline int emit_##N(struct pt_regs *ctx, u32 pid, u32 tid, u32 probe,         \
                                    u64 sp, u64 limit, u64 known_end)                           \
{                                                                                               \
    struct hit_##N *h = reserve(sizeof(struct hit_##N));                                       \
    if (!h)                                                                                     \
        return count_lost();                                                                    \
    COPY_STACK(h, N)                                                                            \
    fill_head(&h->head, ctx, pid, tid, probe, copied, flags);                                   \
    submit(h, wake_flag(pid));                                                                  \
    return 0;                                                                                   \
}

static __always_inline int count_lost(void)
{
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}

static __always_inline void fill_head(struct hit_head *h, struct pt_regs *ctx, u32 pid, u32 tid,
                                      u32 probe, u64 copied, u32 flags)
{
    h->time_ns = bpf_ktime_get_ns();
    h->pid = pid;
    h->tid = tid;
    h->probe = probe;
    h->stack_len = copied;
    h->flags = flags;
    h->pad = 0;
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
    __builtin_memcpy(&h->regs, ctx, sizeof(struct pt_regs));
#ifdef VARS_SIZE
    fetch_vars(ctx, probe, h->vars);
#endif
}

// Waking the reader costs the traced thread ~0.3 us: only a process's first record (its maps
// must be read while it lives) and every WAKE_EVERY-th per CPU wake it; it also drains on a timer.
static __always_inline u64 wake_flag(u32 pid)
{
    u64 wake = BPF_RB_NO_WAKEUP;
    int zero = 0;
    u32 *n = since_wake.lookup(&zero);
    if (n && ++*n >= WAKE_EVERY) {
        *n = 0;
        wake = BPF_RB_FORCE_WAKEUP;
    }
    if (!seen.lookup(&pid)) {
        u8 one = 1;
        seen.update(&pid, &one);
        wake = BPF_RB_FORCE_WAKEUP;
    }
    return wake;
}

EMIT(4096)
EMIT(8192)
EMIT(16384)
EMIT(32768)

#if STACK_CAP > 32768
EMIT(65536)
EMIT(131072)
#endif

// 1 when the buffer is in use (the caller reserves instead), else as emit_N.
static __always_inline int emit_scratch(struct pt_regs *ctx, u32 pid, u32 tid, u32 probe,
                                        u64 sp, u64 limit, u64 known_end)
{
    int zero = 0;
    struct scratch *h = scratch_buf.lookup(&zero);
    if (!h || __sync_lock_test_and_set(&h->busy, 1))
        return 1;
    COPY_STACK(h, SCRATCH)
    fill_head(&h->head, ctx, pid, tid, probe, copied, flags);
    u64 size = sizeof(struct hit_head) + copied;
    barrier_var(size);
    if (size > sizeof(struct hit_head) + SCRATCH + PAGE)
        size = sizeof(struct hit_head) + SCRATCH + PAGE;
    int err = output(&h->head, size, wake_flag(pid));
    asm volatile("" ::: "memory");  // the record is written before the buffer is let go
    h->busy = 0;
    return err ? count_lost() : 0;
}

static __always_inline int capture(struct pt_regs *ctx, u32 probe)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    u64 sp = ctx->sp;
    u64 limit = STACK_CAP;
    u32 *w = want.lookup(&probe);
    if (w && *w && *w < limit)
        limit = *w;
    u64 *end = stack_end.lookup(&tid);
    u64 known_end = 0;
    if (end && *end > sp && *end - sp <= STACK_CAP)
        known_end = *end;
    if (known_end && known_end - sp < limit)
        limit = known_end - sp;
    if (limit <= SCRATCH && emit_scratch(ctx, pid, tid, probe, sp, limit, known_end) == 0)
        return 0;
    if (limit <= 4096)
        return emit_4096(ctx, pid, tid, probe, sp, limit, known_end);
    if (limit <= 8192)
        return emit_8192(ctx, pid, tid, probe, sp, limit, known_end);
    if (limit <= 16384)
        return emit_16384(ctx, pid, tid, probe, sp, limit, known_end);
    if (limit <= 32768)
        return emit_32768(ctx, pid, tid, probe, sp, limit, known_end);
#if STACK_CAP > 32768
    if (limit <= 65536)
        return emit_65536(ctx, pid, tid, probe, sp, limit, known_end);
    return emit_131072(ctx, pid, tid, probe, sp, limit, known_end);
#else
    return 0;
#endif
}

int on_hit(struct pt_regs *ctx)
{
    return capture(ctx, (u32)bpf_get_attach_cookie(ctx));
}
