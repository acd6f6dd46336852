/*
 * console.c - the PV console ring (struct xencons_interface) plus the
 * hypervisor's own console (HYPERVISOR_console_io).
 *
 * The guest is the ring's frontend: it produces out[] and consumes in[].
 * Indices are free-running 32-bit counters masked on access, so
 * prod - cons is the fill level even across wrap-around.  After writing
 * we notify the console port; when the ring is full, when reading an
 * empty in[], or when flushing before shutdown, we wait for the backend's
 * notification with SCHEDOP_poll (clear the port's pending bit, re-check
 * the ring, then poll, so a notification in between is never lost).  The
 * poll has a short timeout so a backend that forgets to notify only slows
 * us down.  Without a ring (dom0, or no console page) output goes through
 * console_io.
 */
#include "xg.h"

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define XG_CONS_POLL_NS 10000000ULL     /* 10 ms */

static struct xencons_interface *cons_intf;
static evtchn_port_t cons_port;

void xg_cons_init(void)
{
    const start_info_t *si = xg_start_info;

    if ((si->flags & SIF_INITDOMAIN) || si->console.domU.mfn == 0)
        return;
    cons_port = si->console.domU.evtchn;
    cons_intf = xg_mfn_to_virt(si->console.domU.mfn);
}

long xg_console_io_write(const char *s)
{
    return HYPERVISOR_console_io(CONSOLEIO_write, (int)strlen(s), s);
}

static void cons_wait(void)
{
    xg_poll_port(cons_port, XG_CONS_POLL_NS);
}

void xg_cons_write(const char *s, size_t n)
{
    struct xencons_interface *intf = cons_intf;

    if (!intf) {
        HYPERVISOR_console_io(CONSOLEIO_write, (int)n, s);
        return;
    }
    while (n) {
        XENCONS_RING_IDX cons, prod;

        xg_evtchn_clear_pending(cons_port);
        cons = READ_ONCE(intf->out_cons);
        prod = intf->out_prod;
        xg_mb();
        if (prod - cons >= sizeof(intf->out)) {
            xg_notify(cons_port);
            cons_wait();
            continue;
        }
        while (n && prod - cons < sizeof(intf->out)) {
            intf->out[MASK_XENCONS_IDX(prod, intf->out)] = *s++;
            prod++;
            n--;
        }
        xg_wmb();
        intf->out_prod = prod;
        xg_notify(cons_port);
    }
}

void xg_cons_flush(void)
{
    struct xencons_interface *intf = cons_intf;

    if (!intf)
        return;
    for (;;) {
        xg_evtchn_clear_pending(cons_port);
        if (READ_ONCE(intf->out_cons) == READ_ONCE(intf->out_prod))
            return;
        xg_notify(cons_port);
        cons_wait();
    }
}

int xg_cons_getc(void)
{
    struct xencons_interface *intf = cons_intf;

    if (!intf) {
        char c;
        for (;;) {
            if (HYPERVISOR_console_io(CONSOLEIO_read, 1, &c) == 1)
                return (unsigned char)c;
            HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
        }
    }
    for (;;) {
        XENCONS_RING_IDX cons, prod;

        xg_evtchn_clear_pending(cons_port);
        cons = intf->in_cons;
        prod = READ_ONCE(intf->in_prod);
        xg_rmb();
        if (prod - cons > sizeof(intf->in))
            xg_panic("console: in_prod %u - in_cons %u exceeds ring size %u\n",
                     prod, cons, (unsigned)sizeof(intf->in));
        if (cons != prod) {
            char c = intf->in[MASK_XENCONS_IDX(cons, intf->in)];
            xg_mb();
            intf->in_cons = cons + 1;
            xg_notify(cons_port);
            return (unsigned char)c;
        }
        cons_wait();
    }
}

size_t xg_cons_readline(char *buf, size_t size)
{
    size_t n = 0;

    for (;;) {
        int c = xg_cons_getc();
        if (c == '\r' || c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = (char)c;
    }
    if (size)
        buf[n] = '\0';
    return n;
}
