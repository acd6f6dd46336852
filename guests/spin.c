/*
 * spin - a CPU-bound loop with no hypercalls, for timing the emulator.
 * x(0) = 1, x(i+1) = x(i) * 1664525 + 1013904223 (mod 2^32), n iterations
 * (cmdline "n=<decimal>", default 10000000).
 *
 * Expected last console line: "spin: done <x(n) as 8 hex digits>",
 * e.g. n=0 gives "spin: done 00000001", n=1 "spin: done 3c88596c".
 */
#include "xg.h"

int main(void)
{
    unsigned long n = xg_cmdline_ulong("n", 10000000UL);
    uint32_t x = 1;

    xg_printf("spin: n=%lu\n", n);
    for (unsigned long i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        asm volatile ("" : "+r" (x));   /* keep the loop: one LCG step per iteration */
    }
    xg_printf("spin: done %08x\n", x);
    return 0;
}
