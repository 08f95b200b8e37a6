/* The traced program of bench/bench_process.py: calls FUNC in libbenchhit.so, three frames below
 * main, COUNT times (0: until SECONDS have passed) at RATE calls per second (0: flat out), then
 * writes "calls=N cpu_ns=C wall_ns=W" to OUTFILE: C is this thread's CPU time (user + system,
 * CLOCK_THREAD_CPUTIME_ID) over the loop alone, which is where a uprobe's trap and BPF program
 * are charged. With LINGER, it then sleeps that many seconds before exiting (its memory map
 * stays readable for a tracer that looks at it after the loop).
 *
 * A paced loop runs its calls in bursts every 10 ms and sleeps between them: each wake-up from
 * the sleep costs the thread a few µs of CPU that vary from run to run, and with 1 ms ticks (10
 * calls at 10,000/s) that noise was ±0.5 µs per call, more than the difference being measured.
 *
 *   hitloop FUNC COUNT RATE SECONDS OUTFILE [LINGER]     (FUNC: bench_hit | bench_hit_ss)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

long bench_hit(long x);
long bench_hit_ss(long x);

static long (*target)(long);
static volatile long keep;

static long now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Three frames of our own between main and the probe, none inlined, none a tail call. */
__attribute__((noinline)) static long level3(long i)
{
    long r = target(i);
    keep = r;
    return r + 1;
}

__attribute__((noinline)) static long level2(long i)
{
    long r = level3(i * 3);
    keep = r;
    return r ^ i;
}

__attribute__((noinline)) static long level1(long count, long rate, double seconds)
{
    long start = now_ns(CLOCK_MONOTONIC);
    long stop = seconds > 0 ? start + (long)(seconds * 1e9) : 0;
    long batch = rate > 0 ? (rate + 99) / 100 : 1000;     /* calls per ~10 ms tick */
    long period = rate > 0 ? (long)(1e9 * batch / rate) : 0;
    long calls = 0;
    struct timespec next = {start / 1000000000L, start % 1000000000L};
    for (;;) {
        for (long b = 0; b < batch; b++) {
            if (count && calls >= count)
                return calls;
            keep = level2(calls);
            calls++;
        }
        if (stop && now_ns(CLOCK_MONOTONIC) >= stop)
            return calls;
        if (period) {
            next.tv_nsec += period;
            while (next.tv_nsec >= 1000000000L) {
                next.tv_nsec -= 1000000000L;
                next.tv_sec++;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s FUNC COUNT RATE SECONDS OUTFILE [LINGER]\n", argv[0]);
        return 2;
    }
    target = strcmp(argv[1], "bench_hit_ss") == 0 ? bench_hit_ss : bench_hit;
    long count = atol(argv[2]), rate = atol(argv[3]);
    double seconds = atof(argv[4]);
    long cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID), wall0 = now_ns(CLOCK_MONOTONIC);
    long calls = level1(count, rate, seconds);
    long cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0, wall = now_ns(CLOCK_MONOTONIC) - wall0;
    FILE *out = fopen(argv[5], "w");
    if (!out) {
        perror(argv[5]);
        return 1;
    }
    fprintf(out, "calls=%ld cpu_ns=%ld wall_ns=%ld\n", calls, cpu, wall);
    fclose(out);
    if (argc == 7)
        sleep(atoi(argv[6]));
    return 0;
}
