/*
 * xg_smp.h - secondary vCPUs (lib/smp.c).
 */
#ifndef XG_SMP_H
#define XG_SMP_H

#include <xen/vcpu.h>

/* VCPUOP_initialise vCPU `id` to run entry() on stack_top (kernel mode, boot page
 * tables, events masked, no traps), then VCPUOP_up; 0 or a negative Xen errno. */
long xg_vcpu_start(unsigned int id, void (*entry)(void), void *stack_top);
/* VCPUOP_down: on the calling vCPU it stops until someone brings it up again. */
void xg_vcpu_down(unsigned int id);

#endif
