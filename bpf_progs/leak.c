// ubt leak: live allocations tracked in the kernel, their stacks walked there with CFI rules
// learnt in user space.
//
// One program serves every probe (uprobe_multi links; bpf_get_attach_cookie() says what the
// probe is, see the COOKIE layout below):
// - allocator entry: the size (and realloc's old pointer, posix_memalign's out pointer) kept
//   per thread in `inflight`; a call made from inside another allocator call of the same
//   thread (realloc(NULL, n) calls malloc, malloc calls mmap) is only counted, not tracked;
// - allocator return: the address (return value, or read through the out pointer); the stack
//   is walked from the caller's registers, which the return restored: every frame is a return
//   address, and `rules` (return address -> how to find its caller) says how to step. When
//   every pc has a rule, the pcs are hashed into a stack id and kept in `stacks`: no user-space
//   work at all. When one has none (a path not seen yet) or one that cannot be expressed
//   (`R_UNREP`), the registers and stack bytes go to the ring buffer `snaps` and the allocation
//   gets a pending id (PENDING | sequence number): user space unwinds that snapshot with the
//   DWARF unwinder, resolves the pending id, and writes the rules of every frame it walked;
// - free entry: the address is dropped from `allocs`;
// - mmap, munmap, mremap: sent to user space as region events (see `struct region_event`);
// - ld.so's _dl_debug_state (the debugger's hook, called before and after every change of the
//   loaded objects) and ld.so's entry point (the first instruction after an exec): the map
//   generation `gens[0]` goes up by the step in the cookie's index bits (1 for the hook; 3 for
//   an exec, which replaces all code at once: as much as a dlclose and a dlopen, see
//   ubt/leak_stacks.py). Rules are keyed by absolute return address, and another object mapped
//   where one was unmapped (dlclose, then dlopen; an exec) puts other code at the same
//   addresses: a rule is used only in the generation it was learnt in (user space unwound a
//   snapshot of that generation), so the first walks of a new generation send snapshots again.
// The hash (FNV-1a over the allocator index, the generation and the pcs) is computed the same
// way in Python (ubt/leak_rules.py), so a stack walked in user space and in the kernel gets the
// same id, and the same addresses in two generations (maybe other code) get two ids.

#include <uapi/linux/ptrace.h>

#define MAX_FRAMES 64
#define PAGE 4096
#define SNAP_STACK 24576             // stack bytes per snapshot (the scratch stays < 32 KB)
#define PENDING (1ULL << 63)
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define barrier_var(var) asm volatile("" : "+r"(var))

// COOKIE: bits 0-7 allocator index (its frame 0); bit 8 return probe; 3-bit argument numbers
// (7: none) at 9 size, 12 size multiplier, 15 old pointer, 18 out pointer; bit 21 free (the
// address is argument `size`); bit 22 fd mode (32-bit keys; an out pointer holds two ints);
// bit 23 size rounded up to pages (pvalloc); bit 24 a memory region function (mmap: an allocator
// whose return sends an R_MMAP event; munmap: a free that sends R_MUNMAP at its entry; with bit
// 25, mremap: R_MREMAP_BEGIN at entry, R_MREMAP_END at return). In fd mode the old pointer is
// the descriptor dup2/dup3 copy: a call that returns it (dup2(fd, fd)) made no new descriptor.
#define C_RETURN (1ULL << 8)
#define C_FREE (1ULL << 21)
#define C_FD (1ULL << 22)
#define C_PAGES (1ULL << 23)
#define C_REGION (1ULL << 24)
#define C_MREMAP (1ULL << 25)
#define C_FCNTL (1ULL << 26)    // fd mode: fcntl(fd, cmd, ...), an allocator for F_DUPFD(_CLOEXEC)
#define C_RANGE (1ULL << 27)    // fd mode: close_range(first, last, flags), a free
#define C_MAPS (1ULL << 28)     // a new map generation, `cookie & 0xff` steps on
#define F_DUPFD 0
#define F_DUPFD_CLOEXEC 1030
#define CLOSE_RANGE_CLOEXEC 4   // marks the fds close-on-exec: closes none
#define CLOSE_RANGE_MAX 4096    // most fds one close_range drops (more: counted, N_RANGE_CUT)
#define ARG(cookie, shift) (((cookie) >> (shift)) & 7)
#define NO_ARG 7

// rule flags
#define R_RBP_CFA 1     // CFA = rbp + off (else rsp + off)
#define R_RBP_SAVED 2   // the caller's rbp is at CFA + rbp_off (else rbp is unchanged)
#define R_END 4         // outermost frame: the return address is undefined
#define R_UNREP 8       // CFI this walk cannot follow: always send a snapshot

// stack flags
#define S_DEEP 1        // cut at MAX_FRAMES

// snapshot flags
#define SNAP_TRUNCATED 1

enum counter { N_SNAPSHOTS, N_LOST, N_ALLOCS_FULL, N_STACKS_FULL, N_DEEP, N_WARM, N_NESTED,
               N_REGIONS_LOST, N_RANGE_CUT, N_COUNTERS };

// Memory regions (mmap/munmap/mremap) are not in `allocs`: an munmap may trim, split or remove
// several of them, which needs an ordered search over ranges. Their calls go to user space as
// events in the ring buffer `snaps` (seq 0 tells them from snapshots), in the order they were
// made, and user space keeps the regions (ubt/leak_regions.py). munmap and mremap send theirs at
// entry, before the kernel frees the range: another thread's mmap of it comes later in the ring.
enum region_kind { R_MMAP = 1, R_MUNMAP, R_MREMAP_BEGIN, R_MREMAP_END };
struct region_event {
    u64 time_ns;
    u64 seq;            // 0: not a snapshot
    u32 pid;
    u32 tid;
    u32 kind;
    u32 pad;
    u64 addr;           // mmap/mremap: the address returned (~0: failed); munmap/mremap: old
    u64 len;            // mmap: bytes (pages); munmap: len; mremap: old_len, then new_len
    u64 arg;            // mremap begin: flags
    u64 stack_id;       // mmap
};

struct alloc_info { u64 size; u64 time_ns; u64 stack_id; };
// `had_old`: realloc's old block was tracked; its entry, taken out of `allocs` at the call's
// entry (glibc frees it inside the call: another thread may get that address and record it
// before this call returns), is `old_info`, put back if the call fails.
struct inflight { u64 size; u64 old; u64 out; u64 sp; u32 depth; u32 had_old;
                  struct alloc_info old_info; };
struct rule { s32 cfa_off; s16 rbp_off; u8 flags; u8 pad; u32 gen; };
struct stack { u32 alloc; u16 depth; u16 flags; u32 gen; u32 pad; u64 pcs[MAX_FRAMES]; };
struct snap_head {
    u64 time_ns;
    u64 seq;
    u32 pid;
    u32 tid;
    u32 alloc;
    u32 stack_len;
    u32 flags;
    u32 gen;            // the map generation the stack is in
    struct pt_regs regs;
};
struct snap { struct snap_head head; u8 stack[SNAP_STACK + PAGE]; /* spare page: loop bound */ };

// Sizes are placeholders where the loader sets them (allocs, snaps).
BPF_HASH(allocs, u64, struct alloc_info, 1024);
BPF_HASH(inflight, u32, struct inflight, 16384);
BPF_HASH(rules, u64, struct rule, 65536);
BPF_F_TABLE("hash", u64, struct stack, stacks, 16384, BPF_F_NO_PREALLOC);
BPF_RINGBUF_OUTPUT(snaps, 1);
BPF_PERCPU_ARRAY(stack_buf, struct stack, 1);
BPF_PERCPU_ARRAY(snap_buf, struct snap, 1);
BPF_PERCPU_ARRAY(bufs_busy, u64, 1);   // stack_buf and snap_buf in use (see stack_id)
BPF_PERCPU_ARRAY(counters, u64, N_COUNTERS);
BPF_ARRAY(config, u64, 3);         // min size, max size, sample every N
BPF_ARRAY(seqs, u64, 1);
BPF_ARRAY(gens, u64, 1);           // the map generation (see _dl_debug_state above)
BPF_ARRAY(fd_max, u64, 1);         // the highest fd tracked (bounds close_range's loop)

static __always_inline void count(int which)
{
    u64 *n = counters.lookup(&which);
    if (n)
        *n += 1;
}

// Argument `n` of a function call. The six are loaded at fixed offsets first (the barriers
// stop clang from turning the choice into a computed ctx offset, which the verifier refuses).
static __always_inline u64 arg(struct pt_regs *ctx, u64 n)
{
    u64 a0 = ctx->di, a1 = ctx->si, a2 = ctx->dx, a3 = ctx->cx, a4 = ctx->r8, a5 = ctx->r9;
    barrier_var(a0);
    barrier_var(a1);
    barrier_var(a2);
    barrier_var(a3);
    barrier_var(a4);
    barrier_var(a5);
    return n == 0 ? a0 : n == 1 ? a1 : n == 2 ? a2 : n == 3 ? a3 : n == 4 ? a4 : n == 5 ? a5 : 0;
}

static __always_inline void send_region(u32 kind, u64 addr, u64 len, u64 arg, u64 stack_id)
{
    u64 id = bpf_get_current_pid_tgid();
    struct region_event e = {bpf_ktime_get_ns(), 0, id >> 32, (u32)id, kind, 0, addr, len, arg,
                             stack_id};
    if (snaps.ringbuf_output(&e, sizeof(e), 0) != 0)
        count(N_REGIONS_LOST);
}

static __always_inline u64 get_config(int which)
{
    u64 *v = config.lookup(&which);
    return v ? *v : 0;
}

static __always_inline u32 generation(void)
{
    int zero = 0;
    u64 *g = gens.lookup(&zero);
    return g ? (u32)*g : 0;
}

static __always_inline int on_maps_change(u64 cookie)
{
    int zero = 0;
    u64 *g = gens.lookup(&zero);
    if (g)
        __sync_fetch_and_add(g, cookie & 0xff);
    return 0;
}

static __always_inline int on_entry(struct pt_regs *ctx, u64 cookie)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *f = inflight.lookup(&tid);
    if (f && ctx->sp < f->sp) {   // deeper than an allocator call in progress: its own
        f->depth++;
        count(N_NESTED);
        return 0;
    }
    if (cookie & C_FCNTL) {
        u64 cmd = (u32)arg(ctx, 1);
        if (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)
            return 0;
    }
    struct inflight in = {};
    u64 size = ARG(cookie, 9) == NO_ARG ? 1 : arg(ctx, ARG(cookie, 9));
    if (ARG(cookie, 12) != NO_ARG)
        size *= arg(ctx, ARG(cookie, 12));
    if (cookie & C_PAGES)
        size = (size + PAGE - 1) & ~(u64)(PAGE - 1);
    in.size = size;
    in.old = ARG(cookie, 15) == NO_ARG ? 0 : arg(ctx, ARG(cookie, 15));
    in.out = ARG(cookie, 18) == NO_ARG ? 0 : arg(ctx, ARG(cookie, 18));
    in.sp = ctx->sp;
    in.depth = 1;
    if (cookie & C_MREMAP)
        send_region(R_MREMAP_BEGIN, arg(ctx, 0), arg(ctx, 1), arg(ctx, 3), 0);
    if (in.old && !(cookie & (C_FD | C_REGION))) {
        struct alloc_info *old = allocs.lookup(&in.old);
        if (old) {
            in.old_info = *old;
            in.had_old = 1;
            allocs.delete(&in.old);
        }
    }
    inflight.update(&tid, &in);
    return 0;
}

// close_range(first, last, flags): every tracked fd from first to min(last, the highest fd
// tracked) dropped at entry (the call fails only on bad flags or first > last).
static __always_inline int close_range(struct pt_regs *ctx)
{
    u64 first = (u32)arg(ctx, 0), last = (u32)arg(ctx, 1);
    int zero = 0;
    u64 *m = fd_max.lookup(&zero);
    if ((arg(ctx, 2) & CLOSE_RANGE_CLOEXEC) || !m || first > last)
        return 0;
    if (last > *m)
        last = *m;
    if (last >= first + CLOSE_RANGE_MAX) {
        count(N_RANGE_CUT);
        last = first + CLOSE_RANGE_MAX - 1;
    }
    for (int i = 0; i < CLOSE_RANGE_MAX; i++) {
        u64 fd = first + i;
        if (fd > last)
            break;
        allocs.delete(&fd);
    }
    return 0;
}

static __always_inline int on_free(struct pt_regs *ctx, u64 cookie)
{
    u64 addr = arg(ctx, ARG(cookie, 9));
    if (cookie & C_REGION) {
        send_region(R_MUNMAP, addr, arg(ctx, 1), 0, 0);
        return 0;
    }
    if (cookie & C_RANGE) {
        return close_range(ctx);
    }
    if (cookie & C_FD)
        addr = (u32)addr;
    allocs.delete(&addr);
    return 0;
}

// Walk from the caller's registers with the rules learnt in this map generation. Returns 0
// when every frame had one (s->depth pcs, *id their hash), 1 when user space must unwind a
// snapshot.
static __always_inline int walk(struct pt_regs *ctx, struct stack *s, u64 *id)
{
    u64 pc = ctx->ip, sp = ctx->sp, rbp = ctx->bp;
    u64 h = (((FNV_OFFSET ^ s->alloc) * FNV_PRIME) ^ s->gen) * FNV_PRIME;  // one step each
    int done = 0;
    s->depth = 0;
    s->flags = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_FRAMES; i++) {
        s->pcs[i] = pc;
        s->depth = i + 1;
        h = (h ^ pc) * FNV_PRIME;
        struct rule *r = rules.lookup(&pc);
        if (!r || r->gen != s->gen || (r->flags & R_UNREP))
            return 1;
        if (r->flags & R_END) {
            done = 1;
            break;
        }
        u64 cfa = ((r->flags & R_RBP_CFA) ? rbp : sp) + (s64)r->cfa_off;
        if (bpf_probe_read_user(&pc, sizeof(pc), (void *)(cfa - 8)) != 0)
            return 1;
        if ((r->flags & R_RBP_SAVED) &&
            bpf_probe_read_user(&rbp, sizeof(rbp), (void *)(cfa + (s64)r->rbp_off)) != 0)
            return 1;
        sp = cfa;
        if (pc == 0) {
            done = 1;
            break;
        }
    }
    if (!done) {
        s->flags = S_DEEP;
        count(N_DEEP);
    }
    h ^= s->flags;
    *id = (h & ~PENDING) | 1;
    return 0;
}

// Registers and stack bytes for user space (page-aligned chunks: a failing chunk is the end
// of the stack). Returns the pending stack id the allocation is recorded with.
static __always_inline u64 emit_snapshot(struct pt_regs *ctx, u32 alloc, u32 gen)
{
    int zero = 0;
    u64 *next = seqs.lookup(&zero);
    struct snap *s = snap_buf.lookup(&zero);
    if (!next || !s)
        return 0;
    u64 seq = __sync_fetch_and_add(next, 1) + 1;
    u64 copied = 0, addr = ctx->sp;
    u32 flags = SNAP_TRUNCATED;
    for (int i = 0; i < SNAP_STACK / PAGE + 1; i++) {
        if (copied >= SNAP_STACK)
            break;
        u64 len = PAGE - (addr & (PAGE - 1));
        if (len > SNAP_STACK - copied)
            len = SNAP_STACK - copied;
        barrier_var(copied);
        barrier_var(len);
        if (copied > SNAP_STACK || len == 0 || len > PAGE)
            break;
        if (bpf_probe_read_user(s->stack + copied, len, (void *)addr) != 0) {
            flags = 0;
            break;
        }
        copied += len;
        addr += len;
    }
    u64 id = bpf_get_current_pid_tgid();
    s->head.time_ns = bpf_ktime_get_ns();
    s->head.seq = seq;
    s->head.pid = id >> 32;
    s->head.tid = (u32)id;
    s->head.alloc = alloc;
    s->head.stack_len = copied;
    s->head.flags = flags;
    s->head.gen = gen;
    __builtin_memcpy(&s->head.regs, ctx, sizeof(struct pt_regs));
    u64 size = sizeof(struct snap_head) + copied;
    barrier_var(size);
    if (size > sizeof(struct snap_head) + SNAP_STACK)
        size = sizeof(struct snap_head) + SNAP_STACK;
    if (snaps.ringbuf_output(s, size, 0) != 0)
        count(N_LOST);
    else
        count(N_SNAPSHOTS);
    return PENDING | seq;
}

// The stack id of an allocation, walked with stack_buf and, on a cold path, snap_buf. Those
// per-CPU buffers are taken by an atomic exchange on bufs_busy: on a preemptible kernel a call
// preempted while using them would otherwise see another call on its CPU overwrite them. A
// call that finds them taken gets the unknown id and is counted with the lost snapshots.
static __always_inline u64 stack_id(struct pt_regs *ctx, u32 alloc)
{
    int zero = 0;
    struct stack *s = stack_buf.lookup(&zero);
    u64 *busy = bufs_busy.lookup(&zero);
    if (!s || !busy)
        return 0;
    if (__sync_lock_test_and_set(busy, 1)) {
        count(N_LOST);
        return 0;
    }
    s->alloc = alloc;
    s->gen = generation();
    s->pad = 0;
    u64 id = 0;
    if (walk(ctx, s, &id) != 0) {
        id = emit_snapshot(ctx, alloc, s->gen);
    } else {
        count(N_WARM);
        if (!stacks.lookup(&id) && stacks.insert(&id, s) != 0 && !stacks.lookup(&id))
            count(N_STACKS_FULL);
    }
    asm volatile("" ::: "memory");  // done with the buffers before letting them go
    *busy = 0;
    return id;
}

static __always_inline int on_return(struct pt_regs *ctx, u64 cookie)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *f = inflight.lookup(&tid);
    if (!f)
        return 0;
    if (f->depth > 1) {
        f->depth--;
        return 0;
    }
    struct inflight in = *f;
    inflight.delete(&tid);
    u64 ret = PT_REGS_RC(ctx);
    u64 addr[2] = {0, 0};
    int n = 1, failed;
    if (ARG(cookie, 18) != NO_ARG) {   // the address is written through an out pointer
        failed = (int)ret != 0;
        if (!failed && (cookie & C_FD)) {
            int fds[2] = {-1, -1};
            failed = bpf_probe_read_user(fds, sizeof(fds), (void *)in.out) != 0;
            addr[0] = (u32)fds[0];
            addr[1] = (u32)fds[1];
            n = 2;
        } else if (!failed) {
            failed = bpf_probe_read_user(&addr[0], 8, (void *)in.out) != 0;
        }
    } else if (cookie & C_FD) {
        failed = (int)ret < 0;
        addr[0] = (u32)ret;
    } else {
        failed = ret == 0 || ret == ~0ULL;
        addr[0] = ret;
    }
    // realloc: the old block (out of `allocs` since the entry) is gone when the call
    // succeeded, or asked for 0 bytes; when it failed, the block is still the caller's
    if (in.had_old && failed && in.size != 0 && allocs.update(&in.old, &in.old_info) != 0)
        count(N_ALLOCS_FULL);
    if (cookie & C_MREMAP) {   // resizes or moves what is tracked: no new allocation
        send_region(R_MREMAP_END, failed ? ~0ULL : addr[0], in.size, 0, 0);
        return 0;
    }
    if (failed)
        return 0;
    if ((cookie & C_FD) && ARG(cookie, 15) != NO_ARG && (u32)in.old == (u32)ret)
        return 0;   // dup2(fd, fd): fd keeps the stack it was opened from
    u64 max = get_config(1), every = get_config(2);
    if (in.size < get_config(0) || (max && in.size > max))
        return 0;
    if (every > 1 && bpf_get_prandom_u32() % every != 0)
        return 0;
    struct alloc_info info = {in.size, bpf_ktime_get_ns(), stack_id(ctx, cookie & 0xff)};
    if (cookie & C_REGION) {
        send_region(R_MMAP, addr[0], in.size, 0, info.stack_id);
        return 0;
    }
    if (allocs.update(&addr[0], &info) != 0)
        count(N_ALLOCS_FULL);
    if (n == 2 && allocs.update(&addr[1], &info) != 0)
        count(N_ALLOCS_FULL);
    int zero = 0;
    u64 *m = fd_max.lookup(&zero);
    if ((cookie & C_FD) && m) {
        u64 top = n == 2 && addr[1] > addr[0] ? addr[1] : addr[0];
        u64 cur = *m;
        // Raised by an atomic add of what this call saw missing: two threads racing both add,
        // so the bound may overshoot (a longer close_range loop) but never ends below an fd
        // (a plain store could, and close_range would then miss that fd).
        if (top > cur)
            __sync_fetch_and_add(m, top - cur);
    }
    return 0;
}

int on_event(struct pt_regs *ctx)
{
    u64 cookie = bpf_get_attach_cookie(ctx);
    if (cookie & C_MAPS)
        return on_maps_change(cookie);
    if (cookie & C_FREE)
        return on_free(ctx, cookie);
    if (cookie & C_RETURN)
        return on_return(ctx, cookie);
    return on_entry(ctx, cookie);
}
