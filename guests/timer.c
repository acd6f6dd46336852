/*
 * timer - periodic VIRQ_TIMER ticks delivered by upcalls.
 *
 * Binds VIRQ_TIMER (xg_events_init), starts a VCPUOP periodic timer of
 * `period_us` (cmdline, default 10000 = 10 ms), enables events and blocks
 * with SCHEDOP_block until `m` ticks (default 10) have arrived, then stops
 * the timer.  Each tick's handler reads Xen system time: the readings must
 * never go backwards, and the whole run must last at least m * period
 * (a periodic timer's k-th tick is due k periods after it was started).
 *
 * Expected last line: "timer: PASS <m> ticks" (else "timer: FAIL (...)"
 * and a crash).
 */
#include "xg.h"
#include "xg_events.h"

struct ticks {
    unsigned long count;
    unsigned long backwards;      /* ticks whose time was before the previous one */
    uint64_t last_ns;
};

static void on_tick(evtchn_port_t port, void *data)
{
    struct ticks *t = data;
    uint64_t now = xg_system_time_ns();

    (void)port;
    if (t->count && now < t->last_ns)
        t->backwards++;
    t->last_ns = now;
    t->count++;
}

static int enough(void *arg)
{
    const struct ticks *t = arg;
    return *(volatile const unsigned long *)&t->count >= xg_cmdline_ulong("m", 10);
}

int main(void)
{
    static struct ticks t;
    unsigned long m = xg_cmdline_ulong("m", 10);
    uint64_t period = (uint64_t)xg_cmdline_ulong("period_us", 10000) * 1000;
    struct vcpu_set_periodic_timer pt = { .period_ns = period };
    uint64_t t0, t1;
    long rc;

    xg_printf("timer: m=%lu period_ns=%llu\n", m, (unsigned long long)period);
    if (m == 0 || period == 0) {
        xg_printf("timer: FAIL (m and period_us must be positive)\n");
        return 1;
    }
    rc = xg_events_init();
    if (rc < 0) {
        xg_printf("timer: FAIL (events init: %ld)\n", rc);
        return 1;
    }
    xg_timer_set_hook(on_tick, &t);
    t0 = xg_system_time_ns();
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &pt);
    if (rc < 0) {
        xg_printf("timer: FAIL (VCPUOP_set_periodic_timer: %ld)\n", rc);
        return 1;
    }
    xg_wait_until(enough, &t, 0);
    xg_local_irq_disable();
    t1 = xg_system_time_ns();
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
    xg_printf("timer: %lu ticks in %llu ns, %lu upcalls\n", t.count,
              (unsigned long long)(t1 - t0), xg_upcall_count());
    if (t.backwards) {
        xg_printf("timer: FAIL (system time went backwards at %lu ticks)\n", t.backwards);
        return 1;
    }
    if (t1 - t0 < m * period) {
        xg_printf("timer: FAIL (%lu ticks took %llu ns, less than %lu * %llu)\n", m,
                  (unsigned long long)(t1 - t0), m, (unsigned long long)period);
        return 1;
    }
    if (xg_upcall_count() == 0) {
        xg_printf("timer: FAIL (no upcall was delivered)\n");
        return 1;
    }
    xg_printf("timer: PASS %lu ticks\n", m);
    return 0;
}
