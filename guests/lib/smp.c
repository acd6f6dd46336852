/*
 * smp.c - start a secondary vCPU as a PV kernel does (Linux's cpu_initialize_context):
 * VCPUOP_initialise with a vcpu_guest_context naming machine frames, then VCPUOP_up.
 *
 * The new vCPU runs in kernel mode on the boot page tables (start_info->pt_base), with
 * Xen's flat selectors, events masked, no trap table and no GDT of its own: `entry`
 * must not fault and must not return (end with xg_vcpu_down()).
 */
#include "xg.h"
#include "xg_events.h"
#include "xg_smp.h"

long xg_vcpu_start(unsigned int id, void (*entry)(void), void *stack_top)
{
    static vcpu_guest_context_t ctx;       /* not on the stack: it is large */
    unsigned long sp = (unsigned long)stack_top;
    long rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.flags = VGCF_in_kernel;
#if defined(__x86_64__)
    sp -= 8;                               /* as after a call: rsp+8 is 16-aligned */
    ctx.user_regs.cs = FLAT_KERNEL_CS;
    ctx.user_regs.ss = FLAT_KERNEL_SS;
    ctx.user_regs.rip = (unsigned long)entry;
    ctx.user_regs.rsp = sp;
#else
    sp -= 4;
    ctx.user_regs.cs = FLAT_KERNEL_CS;
    ctx.user_regs.ss = FLAT_KERNEL_SS;
    ctx.user_regs.ds = ctx.user_regs.es = FLAT_KERNEL_DS;
    ctx.user_regs.eip = (unsigned long)entry;
    ctx.user_regs.esp = sp;
#endif
    ctx.kernel_ss = FLAT_KERNEL_SS;
    ctx.kernel_sp = sp;
    ctx.ctrlreg[3] = xen_pfn_to_cr3(xg_virt_to_mfn((void *)xg_start_info->pt_base));
    rc = HYPERVISOR_vcpu_op(VCPUOP_initialise, id, &ctx);
    if (rc == 0)
        rc = HYPERVISOR_vcpu_op(VCPUOP_up, id, NULL);
    return rc;
}

void xg_vcpu_down(unsigned int id)
{
    HYPERVISOR_vcpu_op(VCPUOP_down, id, NULL);
}
