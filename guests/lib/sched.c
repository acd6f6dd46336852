/*
 * sched.c - event-channel helpers, Xen system time and shutdown.
 *
 * The guest never unmasks events, so a pending bit in shared_info stays
 * set until we clear it ourselves; SCHEDOP_poll returns as soon as one of
 * its ports is pending, whatever the upcall mask says.
 */
#include "xg.h"

long xg_notify(evtchn_port_t port)
{
    struct evtchn_send send = { .port = port };
    return HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

int xg_evtchn_clear_pending(evtchn_port_t port)
{
    const unsigned bits = sizeof(xen_ulong_t) * 8;
    xen_ulong_t *word = &xg_shared_info->evtchn_pending[port / bits];
    xen_ulong_t bit = (xen_ulong_t)1 << (port % bits);

    return (__atomic_fetch_and(word, ~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

/* vcpu_time_info: system_time at tsc_timestamp, extrapolated with the TSC. */
uint64_t xg_system_time_ns(void)
{
    const volatile struct vcpu_time_info *t = &xg_shared_info->vcpu_info[0].time;
    uint32_t version, mul;
    uint64_t system_time, stamp, delta;
    int8_t shift;

    do {
        version = t->version;
        xg_rmb();
        system_time = t->system_time;
        stamp = t->tsc_timestamp;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        xg_rmb();
    } while ((version & 1) || version != t->version);

    delta = xg_rdtsc() - stamp;
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    /* (delta * mul) >> 32 without a 128-bit multiply. */
    return system_time + (((uint64_t)(uint32_t)delta * mul) >> 32)
           + (uint64_t)(uint32_t)(delta >> 32) * mul;
}

long xg_poll_port(evtchn_port_t port, uint64_t timeout_ns)
{
    evtchn_port_t ports[1] = { port };
    struct sched_poll poll;

    memset(&poll, 0, sizeof(poll));
    set_xen_guest_handle(poll.ports, ports);
    poll.nr_ports = 1;
    poll.timeout = timeout_ns ? xg_system_time_ns() + timeout_ns : 0;
    return HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
}

void xg_shutdown(unsigned int reason)
{
    struct sched_shutdown sd = { .reason = reason };

    xg_cons_flush();
    HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    for (;;)
        HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
}

void xg_poweroff(void)
{
    xg_shutdown(SHUTDOWN_poweroff);
}

void xg_crash(void)
{
    xg_shutdown(SHUTDOWN_crash);
}

void xg_panic(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = xg_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    xg_printf("PANIC: ");
    xg_cons_write(buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    xg_crash();
}
