/*
 * xg_arch.h (x86_32 PAE, ring-1 kernel) - width-specific part of the guest
 * library: layout constants, the exception frame and hypercall macros.
 *
 * Hypercalls go through the hypercall page Xen fills in (never a raw
 * `int $0x82`): stub N lives at hypercall_page + N*32 and takes its
 * arguments in ebx, ecx, edx, esi, edi.  Xen may clobber the argument
 * registers (debug builds poison them), so every argument register is
 * declared as an output.
 */
#ifndef XG_ARCH_H
#define XG_ARCH_H

#define XG_VIRT_BASE        0xC0000000UL
#define XG_ARCH_NAME        "x86_32"
#define XG_KERNEL_CS        FLAT_KERNEL_CS
#define XG_KERNEL_SS        FLAT_KERNEL_SS
#define XG_USER_CS          FLAT_USER_CS
#define XG_USER_SS          FLAT_USER_SS
#define XG_KERNEL_TRAP_DPL  1   /* ring-1 kernel: `int n` needs DPL >= 1 */

#ifndef __ASSEMBLY__

typedef uint64_t xg_pte_t;      /* PAE page-table entries are 64 bits wide */

/*
 * What the exception stubs in entry.S leave on the stack, lowest address
 * first: the pushal block, then vector and error code (a dummy 0 where the
 * CPU pushes none), then Xen's bounce frame.  sp/ss exist only when the
 * trap came from ring 3 ((cs & 3) == 3); cs carries the saved upcall mask
 * in bits 16-23.
 */
struct xg_regs {
    unsigned long di, si, bp, _pusha_sp, bx, dx, cx, ax;
    unsigned long vector, error_code;
    unsigned long ip, cs, flags;
    unsigned long sp, ss;
};

#define xg_regs_from_user(r)  (((r)->cs & 3) == 3)

#define __HC_STR(x) #x
#define HC_STR(x) __HC_STR(x)
#define HC_CALL(name) "call hypercall_page + (" HC_STR(__HYPERVISOR_##name) " * 32)"

#define _hypercall0(type, name)                                         \
({                                                                      \
    long __res;                                                         \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res) : : "memory");                         \
    (type)__res;                                                        \
})

#define _hypercall1(type, name, a1)                                     \
({                                                                      \
    long __res, __i1;                                                   \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=b" (__i1)                           \
                  : "1" ((long)(a1))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall2(type, name, a1, a2)                                 \
({                                                                      \
    long __res, __i1, __i2;                                             \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=b" (__i1), "=c" (__i2)              \
                  : "1" ((long)(a1)), "2" ((long)(a2))                  \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall3(type, name, a1, a2, a3)                             \
({                                                                      \
    long __res, __i1, __i2, __i3;                                       \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=b" (__i1), "=c" (__i2), "=d" (__i3) \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall4(type, name, a1, a2, a3, a4)                         \
({                                                                      \
    long __res, __i1, __i2, __i3, __i4;                                 \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=b" (__i1), "=c" (__i2), "=d" (__i3),\
                    "=S" (__i4)                                         \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3)), "4" ((long)(a4))                  \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall5(type, name, a1, a2, a3, a4, a5)                     \
({                                                                      \
    long __res, __i1, __i2, __i3, __i4, __i5;                           \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=b" (__i1), "=c" (__i2), "=d" (__i3),\
                    "=S" (__i4), "=D" (__i5)                            \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3)), "4" ((long)(a4)),                 \
                    "5" ((long)(a5))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

/* PAE: the new PTE is passed as two 32-bit halves (low in ecx, high in edx). */
static inline int HYPERVISOR_update_va_mapping(unsigned long va, xg_pte_t pte,
                                               unsigned long flags)
{
    return _hypercall4(int, update_va_mapping, va, (unsigned long)pte,
                       (unsigned long)(pte >> 32), flags);
}

static inline uint64_t xg_rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile ("rdtsc" : "=a" (lo), "=d" (hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif /* __ASSEMBLY__ */
#endif
