/*
 * traps.c - trap table registration and the C side of exception entry.
 *
 * HYPERVISOR_set_trap_table takes trap_info entries (vector, flags, cs,
 * address) terminated by one whose address is 0.  flags bits 0-1 are the
 * DPL a software `int n` needs: 0 for exceptions only the CPU raises, 3
 * for int3, into and int $0x80 so user mode may use them.  Events are
 * already masked and stay so; the event-mask bit (4) is not needed.
 */
#include "xg.h"

static xg_trap_hook_t trap_hook;

void xg_trap_dispatch(struct xg_regs *regs);

void xg_trap_dispatch(struct xg_regs *regs)
{
    if (trap_hook)
        trap_hook(regs);
    else
        xg_trap_unhandled(regs);
}

long xg_traps_init(xg_trap_hook_t hook)
{
    static trap_info_t table[21 + 1];
    unsigned int v, n = 0;

    trap_hook = hook;
    for (v = 0; v < 20; v++) {
        table[n].vector = (uint8_t)v;
        table[n].flags = (v == 3 || v == 4) ? 3 : 0;
        table[n].cs = XG_KERNEL_CS;
        table[n].address = (unsigned long)(xg_trap_stubs + v * XG_TRAP_STUB_SIZE);
        n++;
    }
    table[n].vector = 0x80;
    table[n].flags = 3;
    table[n].cs = XG_KERNEL_CS;
    table[n].address = (unsigned long)xg_trap_stub_int80;
    n++;
    memset(&table[n], 0, sizeof(table[n]));       /* sentinel: address 0 */
    return HYPERVISOR_set_trap_table(table);
}

void xg_dump_regs(const struct xg_regs *r)
{
    xg_printf("  vector %lu error_code %#lx ip %#lx cs %#lx flags %#lx\n",
              r->vector, r->error_code, r->ip, r->cs, r->flags);
    xg_printf("  ax %#lx bx %#lx cx %#lx dx %#lx si %#lx di %#lx bp %#lx\n",
              r->ax, r->bx, r->cx, r->dx, r->si, r->di, r->bp);
    if (xg_regs_from_user(r))
        xg_printf("  user sp %#lx ss %#lx\n", r->sp, r->ss);
    if (r->vector == 14)
        xg_printf("  cr2 %#lx\n", xg_shared_info->vcpu_info[0].arch.cr2);
}

void xg_trap_unhandled(const struct xg_regs *r)
{
    xg_printf("xg: unhandled trap %lu\n", r->vector);
    xg_dump_regs(r);
    xg_crash();
}
