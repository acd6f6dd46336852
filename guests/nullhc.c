/*
 * nullhc - n null hypercalls (xen_version(XENVER_version, NULL)) to measure
 * the hypercall round trip (cmdline "n=<decimal>", default 1000000).
 *
 * Expected last console line: "nullhc: done <n>".
 */
#include "xg.h"

int main(void)
{
    unsigned long n = xg_cmdline_ulong("n", 1000000UL), i;
    long first = HYPERVISOR_xen_version(XENVER_version, NULL);

    xg_printf("nullhc: n=%lu\n", n);
    for (i = 0; i < n; i++) {
        long v = HYPERVISOR_xen_version(XENVER_version, NULL);
        if (v != first) {
            xg_printf("nullhc: FAIL (call %lu returned %ld, first returned %ld)\n",
                      i, v, first);
            return 1;
        }
    }
    xg_printf("nullhc: done %lu\n", i);
    return 0;
}
