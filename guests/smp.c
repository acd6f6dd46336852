/*
 * smp - a second vCPU brought up as a PV kernel does (VCPUOP_initialise + VCPUOP_up),
 * both vCPUs working on shared memory, then the second one taken down.
 *
 * Needs a domain with 2 vCPUs.  cmdline: n=<increments per vCPU> (default 100000).
 * Checks, one "smp: <name>: ok" / "smp: <name>: FAIL (<why>)" line each:
 *   down-at-boot  VCPUOP_is_up(1) == 0, VCPUOP_up(1) before initialise is -EINVAL
 *   start         initialise + up return 0, is_up(1) == 1, a second initialise -EEXIST
 *   ran           vCPU 1 ran on its own stack (it wrote its stack address)
 *   atomic        both vCPUs did n lock-xadds on one counter: it holds 2n
 *   down          vCPU 1 took itself down: is_up(1) == 0
 *   bad-vcpu      VCPUOP_initialise/is_up of vCPU 64 is -ENOENT
 * Last line: "smp: PASS (<k> checks)" or "smp: FAIL (<j> of <k> failed)".
 */
#include "xg.h"
#include "xg_events.h"
#include "xg_smp.h"

static char stack1[16384] __attribute__((aligned(16)));
static volatile uint32_t counter, started, finished;
static volatile unsigned long seen_sp;
static unsigned long n;
static unsigned int checks, failed;

static void check(const char *name, int ok, const char *why, long a, long b)
{
    checks++;
    if (ok) {
        xg_printf("smp: %s: ok\n", name);
        return;
    }
    failed++;
    xg_printf("smp: %s: FAIL (%s: %ld %ld)\n", name, why, a, b);
}

static void vcpu1_main(void)
{
    unsigned long sp;

    asm volatile ("mov %%esp, %k0" : "=r"(sp));
    seen_sp = sp;
    started = 1;
    for (unsigned long i = 0; i < n; i++)
        __sync_fetch_and_add(&counter, 1);
    finished = 1;
    xg_vcpu_down(1);
    for (;;)
        HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
}

static void wait_for(volatile uint32_t *flag)
{
    for (int i = 0; i < 1000000 && !*flag; i++)
        HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
}

int main(void)
{
    long up0, early, init, up1, again, bad1, bad2;

    n = xg_cmdline_ulong("n", 100000);
    up0 = HYPERVISOR_vcpu_op(VCPUOP_is_up, 1, NULL);
    early = HYPERVISOR_vcpu_op(VCPUOP_up, 1, NULL);
    check("down-at-boot", up0 == 0 && early == -XEN_EINVAL, "is_up, up", up0, early);
    init = xg_vcpu_start(1, vcpu1_main, stack1 + sizeof(stack1));
    up1 = HYPERVISOR_vcpu_op(VCPUOP_is_up, 1, NULL);
    {
        static vcpu_guest_context_t ctx;
        again = HYPERVISOR_vcpu_op(VCPUOP_initialise, 1, &ctx);
        bad1 = HYPERVISOR_vcpu_op(VCPUOP_initialise, 64, &ctx);
    }
    check("start", init == 0 && up1 == 1 && again == -XEN_EEXIST, "start, is_up", init, up1);
    for (unsigned long i = 0; i < n; i++)
        __sync_fetch_and_add(&counter, 1);
    if (init == 0) {                   /* no vCPU 1: do not wait for it */
        wait_for(&started);
        wait_for(&finished);
    }
    check("ran", started && (uint32_t)seen_sp > (uint32_t)(unsigned long)stack1 &&
          (uint32_t)seen_sp <= (uint32_t)(unsigned long)(stack1 + sizeof(stack1)),
          "started, sp", started, (long)seen_sp);
    check("atomic", counter == 2 * n, "counter, 2n", counter, (long)(2 * n));
    for (int i = 0; init == 0 && i < 1000 && HYPERVISOR_vcpu_op(VCPUOP_is_up, 1, NULL) != 0; i++)
        HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
    check("down", HYPERVISOR_vcpu_op(VCPUOP_is_up, 1, NULL) == 0, "is_up", 1, 0);
    bad2 = HYPERVISOR_vcpu_op(VCPUOP_is_up, 64, NULL);
    check("bad-vcpu", bad1 == -XEN_ENOENT && bad2 == -XEN_ENOENT, "initialise, is_up",
          bad1, bad2);
    if (failed)
        xg_printf("smp: FAIL (%u of %u failed)\n", failed, checks);
    else
        xg_printf("smp: PASS (%u checks)\n", checks);
    return failed != 0;
}
