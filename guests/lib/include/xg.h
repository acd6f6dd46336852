/*
 * xg.h - the xenpy-test guest library: everything a tiny PV kernel needs
 * to talk to Xen through the real PV ABI, and nothing more.
 *
 * Boot: head.S switches to a stack in .bss, clears .bss and calls
 * xg_c_start(start_info), which maps shared_info, finds the PV console
 * ring through the M2P, calls the guest's main() and powers off with its
 * result (0 = poweroff, otherwise crash).  Events stay masked for the
 * guest's whole life: no upcall handler is registered, so waiting is done
 * with SCHEDOP_poll on a port, never SCHEDOP_block (which would unmask).
 */
#ifndef XG_H
#define XG_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>

#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/event_channel.h>
#include <xen/version.h>
#include <xen/vcpu.h>
#include <xen/io/console.h>

#include "xg_arch.h"

#define XG_PAGE_SHIFT 12
#define XG_PAGE_SIZE  (1UL << XG_PAGE_SHIFT)

/* x86 page-table entry bits (hardware format, which Xen PV uses as-is). */
#define XG_PAGE_PRESENT  0x001UL
#define XG_PAGE_RW       0x002UL
#define XG_PAGE_USER     0x004UL
#define XG_PAGE_ACCESSED 0x020UL
#define XG_PAGE_DIRTY    0x040UL

#define xg_mb()  asm volatile ("mfence" ::: "memory")
#define xg_rmb() asm volatile ("lfence" ::: "memory")
#define xg_wmb() asm volatile ("" ::: "memory")   /* x86 keeps stores ordered */
#define xg_barrier() asm volatile ("" ::: "memory")

#define XG_NORETURN __attribute__((noreturn))
#define XG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define XG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Provided by each guest. */
int main(void);

/* Set up by xg_c_start() before main() runs. */
extern start_info_t *xg_start_info;
extern shared_info_t *xg_shared_info;
extern char hypercall_page[];

/* ---- hypercalls (common to both widths) ---- */
static inline long HYPERVISOR_set_trap_table(const trap_info_t *table)
{ return _hypercall1(long, set_trap_table, table); }
static inline long HYPERVISOR_stack_switch(unsigned long ss, unsigned long sp)
{ return _hypercall2(long, stack_switch, ss, sp); }
static inline long HYPERVISOR_console_io(int cmd, int count, const char *str)
{ return _hypercall3(long, console_io, cmd, count, str); }
static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{ return _hypercall2(long, xen_version, cmd, arg); }
static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{ return _hypercall2(long, sched_op, cmd, arg); }
static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{ return _hypercall2(long, event_channel_op, cmd, arg); }
static inline long HYPERVISOR_mmuext_op(struct mmuext_op *op, unsigned int count,
                                        unsigned int *done, domid_t dom)
{ return _hypercall4(long, mmuext_op, op, count, done, dom); }

/* ---- memory ---- */
static inline unsigned long xg_virt_to_pfn(const void *va)
{ return ((unsigned long)va - XG_VIRT_BASE) >> XG_PAGE_SHIFT; }
static inline void *xg_pfn_to_virt(unsigned long pfn)
{ return (void *)(XG_VIRT_BASE + (pfn << XG_PAGE_SHIFT)); }
unsigned long xg_pfn_to_mfn(unsigned long pfn);     /* via start_info->mfn_list */
unsigned long xg_mfn_to_pfn(unsigned long mfn);     /* via the read-only M2P */
void *xg_mfn_to_virt(unsigned long mfn);
unsigned long xg_virt_to_mfn(const void *va);
/* Remap the page at va to mfn with the given PTE flags (UVMF_INVLPG). */
int xg_map_mfn(void *va, unsigned long mfn, unsigned long flags);

/* ---- strings ---- */
void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
/* Value of "key=<decimal>" in the command line, or def if absent/bad. */
unsigned long xg_cmdline_ulong(const char *key, unsigned long def);
/* A 32-bit hash of three words: the data pattern of the memory and disk checkers
 * (memtouch, blkloop), so a test on the host can recompute any word. */
static inline uint32_t xg_hash3(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t x = a * 0x9E3779B1u ^ b * 0x85EBCA77u ^ c * 0xC2B2AE3Du;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 12;
    return x;
}

/* ---- console ---- */
void xg_cons_init(void);
void xg_cons_write(const char *s, size_t n);    /* PV console ring (or console_io) */
void xg_cons_flush(void);                       /* wait for out_cons == out_prod */
int xg_cons_getc(void);                         /* blocking read of one byte */
size_t xg_cons_readline(char *buf, size_t size);
long xg_console_io_write(const char *s);        /* HYPERVISOR_console_io */
int xg_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int xg_snprintf(char *buf, size_t size, const char *fmt, ...) XG_PRINTF(3, 4);
int xg_printf(const char *fmt, ...) XG_PRINTF(1, 2);

/* ---- scheduling / time ---- */
uint64_t xg_system_time_ns(void);
/* Clear port's pending bit; returns whether it was set. */
int xg_evtchn_clear_pending(evtchn_port_t port);
/* Sleep until port is pending or timeout_ns elapses (0 = no timeout). */
long xg_poll_port(evtchn_port_t port, uint64_t timeout_ns);
long xg_notify(evtchn_port_t port);
XG_NORETURN void xg_shutdown(unsigned int reason);  /* flushes the console first */
XG_NORETURN void xg_poweroff(void);
XG_NORETURN void xg_crash(void);
XG_NORETURN void xg_panic(const char *fmt, ...) XG_PRINTF(1, 2);

/* ---- traps ---- */
typedef void (*xg_trap_hook_t)(struct xg_regs *regs);
/*
 * Install a trap table covering vectors 0-19 (int3/into DPL 3) and
 * 0x80 (DPL 3); every trap calls hook(regs).  The hook may change
 * regs->ip; the stub then returns through HYPERVISOR_iret.
 */
long xg_traps_init(xg_trap_hook_t hook);
/* Default hook body: print the frame and crash the domain. */
XG_NORETURN void xg_trap_unhandled(const struct xg_regs *regs);
void xg_dump_regs(const struct xg_regs *regs);
/*
 * Drop to user mode at ip with stack sp via HYPERVISOR_iret; returns the
 * value later passed to xg_return_to_kernel() from a trap hook.
 */
long xg_enter_user(unsigned long ip, unsigned long sp);
XG_NORETURN void xg_return_to_kernel(long value);

/* Exception stubs in entry.S. */
extern char xg_trap_stubs[];    /* 20 stubs, XG_TRAP_STUB_SIZE bytes apart */
extern char xg_trap_stub_int80[];
#define XG_TRAP_STUB_SIZE 32

#endif
