/*
 * xg_events.h - event-channel upcalls for the xenpy-test guests.
 *
 * Until xg_events_init() the library keeps events masked and waits with
 * SCHEDOP_poll (xg.h).  xg_events_init() switches a guest to the way real
 * PV kernels work: it masks every port in shared_info->evtchn_mask,
 * registers hypervisor_callback (CALLBACKTYPE_event) and a failsafe
 * callback, and from then on a port becomes live only when a handler is
 * bound to it (which unmasks it).  Ports without a handler - the console
 * port in particular - stay masked, so console.c keeps polling them as
 * before and never races with the upcall.
 *
 * The upcall runs with events masked (Xen sets evtchn_upcall_mask when it
 * bounces to the callback) on the current kernel stack; it scans
 * evtchn_pending_sel, then evtchn_pending & ~evtchn_mask of each selected
 * word, clears each pending bit and calls that port's handler, and returns
 * through HYPERVISOR_iret, which restores the mask from the saved EFLAGS.IF
 * atomically (an event that arrived meanwhile is delivered at once).
 *
 * Waiting: xg_wait_until() checks a condition with events masked and, if
 * it does not hold, calls SCHEDOP_block, which unmasks and blocks in one
 * step unless an upcall is already pending - no wake-up can be lost
 * between the check and the block.
 */
#ifndef XG_EVENTS_H
#define XG_EVENTS_H

#include "xg.h"
#include <xen/callback.h>
#include <xen/errno.h>

/* ---- hypercalls used here (not in xg.h) ---- */
static inline long HYPERVISOR_callback_op(int cmd, const void *arg)
{ return _hypercall2(long, callback_op, cmd, arg); }
static inline long HYPERVISOR_vcpu_op(int cmd, unsigned int vcpuid, void *arg)
{ return _hypercall3(long, vcpu_op, cmd, vcpuid, arg); }

typedef void (*xg_evtchn_handler_t)(evtchn_port_t port, void *data);

/* Mask every port, register the event and failsafe callbacks.  Events stay
 * masked at the vCPU level until xg_local_irq_enable(). 0 or -errno. */
int xg_events_init(void);

/* ---- vCPU-level mask (vcpu_info.evtchn_upcall_mask) ---- */
void xg_local_irq_disable(void);
/* Unmask; if an upcall became pending meanwhile, have Xen deliver it now. */
void xg_local_irq_enable(void);
int xg_local_irq_save(void);                /* disable; returns the old mask */
void xg_local_irq_restore(int flags);
int xg_irqs_disabled(void);

/* ---- ports: each returns the port (>= 0) or a negative Xen errno ---- */
long xg_evtchn_bind_virq(uint32_t virq, xg_evtchn_handler_t h, void *data);
long xg_evtchn_alloc_unbound(domid_t remote, xg_evtchn_handler_t h, void *data);
long xg_evtchn_bind_interdomain(domid_t remote, evtchn_port_t remote_port,
                                xg_evtchn_handler_t h, void *data);
/* Attach a handler to a port we already have (e.g. start_info's store
 * port) and unmask it. */
int xg_evtchn_bind(evtchn_port_t port, xg_evtchn_handler_t h, void *data);
/* Mask the port and forget its handler (the port stays open). */
void xg_evtchn_unbind(evtchn_port_t port);
/* Unbind and EVTCHNOP_close. */
int xg_evtchn_close(evtchn_port_t port);
void xg_evtchn_mask(evtchn_port_t port);
int xg_evtchn_unmask(evtchn_port_t port);     /* EVTCHNOP_unmask (Xen re-raises) */

/* ---- VIRQ_TIMER: bound by xg_events_init(), used for wait deadlines ---- */
evtchn_port_t xg_timer_port(void);
unsigned long xg_timer_ticks(void);           /* VIRQ_TIMER events seen */
/* Called (in the upcall, events masked) on every VIRQ_TIMER event. */
void xg_timer_set_hook(xg_evtchn_handler_t h, void *data);

/* ---- counters (for tests and diagnostics) ---- */
unsigned long xg_upcall_count(void);          /* callbacks entered */
unsigned long xg_spurious_count(void);        /* pending bits with no handler */

/* ---- waiting ---- */
typedef int (*xg_cond_t)(void *arg);
/*
 * Block (SCHEDOP_block) until cond(arg) is true; deadline_ns is an
 * absolute Xen system time (0 = none), armed as a VCPUOP single-shot
 * timer.  Returns 0 when cond held, -XEN_ETIMEDOUT at the deadline.
 * Leaves events enabled at the vCPU level.
 */
int xg_wait_until(xg_cond_t cond, void *arg, uint64_t deadline_ns);
/* Block once until some event arrives (or deadline_ns; 0 = none). */
void xg_block(uint64_t deadline_ns);

/* Entry points in arch/<width>/entry.S. */
extern char xg_hypervisor_callback[];
extern char xg_failsafe_callback[];

#endif
