/* The probed functions for bench/bench_process.py, built as libbenchhit.so with
 * -O2 -fomit-frame-pointer -g (no frame pointers, like most distribution code).
 *
 *   bench_hit      starts with `push %rbx`: an instruction the kernel emulates at a uprobe
 *                  (the cheap kind of trap, ~0.5 us)
 *   bench_hit_ss   starts with a rip-relative `mov`: the kernel must single-step it out of line
 *                  (the expensive kind, ~7 us; libc's opendir is one of these)
 *
 * The bench checks each first instruction with objdump and prints it.
 */
volatile long bench_sink;
long bench_counter;

__attribute__((noipa)) static long mix(long x)
{
    bench_sink = x;
    return x * 2654435761L;
}

/* x lives across a call: gcc keeps it in a callee-saved register, saved by the first push */
__attribute__((noinline)) long bench_hit(long x)
{
    long a = mix(x);
    return mix(x ^ a) + x;
}

/* a global read first: `mov bench_counter(%rip),%rax` */
__attribute__((noinline)) long bench_hit_ss(long x)
{
    long c = bench_counter;
    bench_counter = c + x;
    return c;
}
