/*
 * events.c - event-channel upcalls, port binding and SCHEDOP_block waits.
 *
 * See xg_events.h for the model.  Invariants:
 * - a port is unmasked in shared_info->evtchn_mask only while a handler is
 *   bound to it (xg_events_init masks all of them first), so the upcall
 *   never has to decide what to do with the console's port;
 * - bindings change with events masked at the vCPU level, so the upcall
 *   never sees a half-bound port;
 * - the upcall clears a port's pending bit before calling its handler, so
 *   an event raised while the handler runs is seen again, never lost.
 */
#include "xg.h"
#include "xg_events.h"

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define BITS_PER_WORD (sizeof(xen_ulong_t) * 8)

struct port_handler {
    xg_evtchn_handler_t fn;
    void *data;
};

static struct port_handler handlers[EVTCHN_2L_NR_CHANNELS];
static unsigned long upcalls, spurious, timer_ticks;
static evtchn_port_t timer_port;
static struct port_handler timer_hook;

static struct vcpu_info *vcpu0(void)
{
    return &xg_shared_info->vcpu_info[0];
}

/* ---- the upcall (called from xg_hypervisor_callback in entry.S) ---- */

void xg_evtchn_do_upcall(struct xg_regs *regs);
void xg_failsafe(struct xg_regs *regs);

void xg_evtchn_do_upcall(struct xg_regs *regs)
{
    struct vcpu_info *vi = vcpu0();
    shared_info_t *s = xg_shared_info;

    (void)regs;
    upcalls++;
    while (READ_ONCE(vi->evtchn_upcall_pending)) {
        xen_ulong_t sel;

        vi->evtchn_upcall_pending = 0;
        /* Xen sets the selector before upcall_pending: take it after. */
        sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            unsigned int w = (unsigned int)__builtin_ctzl(sel);
            xen_ulong_t pend;

            sel &= sel - 1;
            pend = READ_ONCE(s->evtchn_pending[w]) & ~READ_ONCE(s->evtchn_mask[w]);
            while (pend) {
                unsigned int b = (unsigned int)__builtin_ctzl(pend);
                evtchn_port_t port = w * BITS_PER_WORD + b;
                struct port_handler *h = &handlers[port];

                pend &= pend - 1;
                xg_evtchn_clear_pending(port);
                if (h->fn)
                    h->fn(port, h->data);
                else
                    spurious++;
            }
        }
    }
}

/* Xen could not load the segments of an iret frame: nothing sane to do. */
void xg_failsafe(struct xg_regs *regs)
{
    xg_printf("xg: failsafe callback (bad segment on return)\n");
    xg_dump_regs(regs);
    xg_crash();
}

/* ---- vCPU mask ---- */

void xg_local_irq_disable(void)
{
    vcpu0()->evtchn_upcall_mask = 1;
    xg_barrier();
}

void xg_local_irq_enable(void)
{
    struct vcpu_info *vi = vcpu0();

    xg_barrier();
    vi->evtchn_upcall_mask = 0;
    xg_mb();            /* unmask before looking at upcall_pending */
    if (READ_ONCE(vi->evtchn_upcall_pending))
        HYPERVISOR_xen_version(XENVER_version, NULL);   /* any hypercall: Xen
                                                           delivers on its way out */
}

int xg_irqs_disabled(void)
{
    return READ_ONCE(vcpu0()->evtchn_upcall_mask) != 0;
}

int xg_local_irq_save(void)
{
    int old = xg_irqs_disabled();
    xg_local_irq_disable();
    return old;
}

void xg_local_irq_restore(int flags)
{
    if (!flags)
        xg_local_irq_enable();
}

/* ---- ports ---- */

void xg_evtchn_mask(evtchn_port_t port)
{
    __atomic_fetch_or(&xg_shared_info->evtchn_mask[port / BITS_PER_WORD],
                      (xen_ulong_t)1 << (port % BITS_PER_WORD), __ATOMIC_SEQ_CST);
}

int xg_evtchn_unmask(evtchn_port_t port)
{
    struct evtchn_unmask op = { .port = port };
    return (int)HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &op);
}

int xg_evtchn_bind(evtchn_port_t port, xg_evtchn_handler_t h, void *data)
{
    int flags, rc;

    if (port == 0 || port >= EVTCHN_2L_NR_CHANNELS || !h)
        return -XEN_EINVAL;
    flags = xg_local_irq_save();
    handlers[port].fn = h;
    handlers[port].data = data;
    rc = xg_evtchn_unmask(port);
    if (rc < 0) {
        handlers[port].fn = NULL;
        handlers[port].data = NULL;
    }
    xg_local_irq_restore(flags);
    return rc;
}

void xg_evtchn_unbind(evtchn_port_t port)
{
    int flags;

    if (port == 0 || port >= EVTCHN_2L_NR_CHANNELS)
        return;
    flags = xg_local_irq_save();
    xg_evtchn_mask(port);
    handlers[port].fn = NULL;
    handlers[port].data = NULL;
    xg_local_irq_restore(flags);
}

int xg_evtchn_close(evtchn_port_t port)
{
    struct evtchn_close op = { .port = port };

    xg_evtchn_unbind(port);
    return (int)HYPERVISOR_event_channel_op(EVTCHNOP_close, &op);
}

/* Bind a freshly allocated port, closing it again if that fails. */
static long bind_new(long port, xg_evtchn_handler_t h, void *data)
{
    int rc;

    if (port < 0 || !h)
        return port;
    rc = xg_evtchn_bind((evtchn_port_t)port, h, data);
    if (rc < 0) {
        struct evtchn_close op = { .port = (evtchn_port_t)port };
        HYPERVISOR_event_channel_op(EVTCHNOP_close, &op);
        return rc;
    }
    return port;
}

long xg_evtchn_bind_virq(uint32_t virq, xg_evtchn_handler_t h, void *data)
{
    struct evtchn_bind_virq op = { .virq = virq, .vcpu = 0 };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &op);

    return bind_new(rc < 0 ? rc : (long)op.port, h, data);
}

long xg_evtchn_alloc_unbound(domid_t remote, xg_evtchn_handler_t h, void *data)
{
    struct evtchn_alloc_unbound op = { .dom = DOMID_SELF, .remote_dom = remote };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &op);

    return bind_new(rc < 0 ? rc : (long)op.port, h, data);
}

long xg_evtchn_bind_interdomain(domid_t remote, evtchn_port_t remote_port,
                                xg_evtchn_handler_t h, void *data)
{
    struct evtchn_bind_interdomain op = { .remote_dom = remote,
                                          .remote_port = remote_port };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_interdomain, &op);

    return bind_new(rc < 0 ? rc : (long)op.local_port, h, data);
}

/* ---- VIRQ_TIMER ---- */

static void timer_handler(evtchn_port_t port, void *data)
{
    (void)data;
    timer_ticks++;
    if (timer_hook.fn)
        timer_hook.fn(port, timer_hook.data);
}

evtchn_port_t xg_timer_port(void) { return timer_port; }
unsigned long xg_timer_ticks(void) { return READ_ONCE(timer_ticks); }
unsigned long xg_upcall_count(void) { return READ_ONCE(upcalls); }
unsigned long xg_spurious_count(void) { return READ_ONCE(spurious); }

void xg_timer_set_hook(xg_evtchn_handler_t h, void *data)
{
    int flags = xg_local_irq_save();
    timer_hook.fn = h;
    timer_hook.data = data;
    xg_local_irq_restore(flags);
}

/* ---- setup ---- */

static int register_callback(unsigned int type, void *entry)
{
    struct callback_register cb;

    memset(&cb, 0, sizeof(cb));
    cb.type = (uint16_t)type;
#ifdef __x86_64__
    cb.address = (unsigned long)entry;
#else
    cb.address.cs = XG_KERNEL_CS;
    cb.address.eip = (unsigned long)entry;
#endif
    return (int)HYPERVISOR_callback_op(CALLBACKOP_register, &cb);
}

int xg_events_init(void)
{
    shared_info_t *s = xg_shared_info;
    unsigned int i;
    long rc;

    xg_local_irq_disable();
    for (i = 0; i < XG_ARRAY_SIZE(s->evtchn_mask); i++)
        s->evtchn_mask[i] = ~(xen_ulong_t)0;
    rc = register_callback(CALLBACKTYPE_event, xg_hypervisor_callback);
    if (rc == 0)
        rc = register_callback(CALLBACKTYPE_failsafe, xg_failsafe_callback);
    if (rc < 0)
        return (int)rc;
    rc = xg_evtchn_bind_virq(VIRQ_TIMER, timer_handler, NULL);
    if (rc < 0)
        return (int)rc;
    timer_port = (evtchn_port_t)rc;
    return 0;
}

/* ---- waiting ---- */

static void arm_singleshot(uint64_t deadline_ns)
{
    struct vcpu_set_singleshot_timer t = { .timeout_abs_ns = deadline_ns, .flags = 0 };
    HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
}

void xg_block(uint64_t deadline_ns)
{
    xg_local_irq_disable();
    if (deadline_ns)
        arm_singleshot(deadline_ns);
    /* Unmasks and blocks unless an upcall is pending; the upcall runs on
     * the way back from the hypercall. */
    HYPERVISOR_sched_op(SCHEDOP_block, NULL);
    xg_local_irq_enable();
}

int xg_wait_until(xg_cond_t cond, void *arg, uint64_t deadline_ns)
{
    for (;;) {
        xg_local_irq_disable();
        if (cond(arg)) {
            xg_local_irq_enable();
            return 0;
        }
        if (deadline_ns && xg_system_time_ns() >= deadline_ns) {
            xg_local_irq_enable();
            return -XEN_ETIMEDOUT;
        }
        if (deadline_ns)
            arm_singleshot(deadline_ns);
        HYPERVISOR_sched_op(SCHEDOP_block, NULL);
    }
}
