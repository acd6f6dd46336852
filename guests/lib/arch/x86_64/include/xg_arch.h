/*
 * xg_arch.h (x86_64, ring-3 kernel) - width-specific part of the guest
 * library: layout constants, the exception frame and hypercall macros.
 *
 * Stub N of the hypercall page (hypercall_page + N*32) saves rcx/r11 and
 * does `syscall`; arguments travel in rdi, rsi, rdx, r10, r8.  Xen may
 * clobber the argument registers, so they are all outputs.  The stubs and
 * Xen's bounce frames both write below %rsp, hence -mno-red-zone.
 */
#ifndef XG_ARCH_H
#define XG_ARCH_H

#define XG_VIRT_BASE        0xFFFFFFFF80000000UL
#define XG_ARCH_NAME        "x86_64"
#define XG_KERNEL_CS        FLAT_KERNEL_CS
#define XG_KERNEL_SS        FLAT_KERNEL_SS
#define XG_USER_CS          FLAT_USER_CS64
#define XG_USER_SS          FLAT_USER_SS64
#define XG_KERNEL_TRAP_DPL  1   /* Xen treats the 64-bit kernel as ring 1 for `int n` */

#ifndef __ASSEMBLY__

typedef uint64_t xg_pte_t;

/*
 * What the exception stubs in entry.S leave on the stack, lowest address
 * first: general registers (rcx/r11 already restored from Xen's frame),
 * vector, error code (dummy 0 where none), then the hardware-style frame
 * Xen built.  Xen reports a kernel-mode CS with RPL 0 (0xe030) and a
 * user-mode one with RPL 3; the saved upcall mask sits in cs bits 32-39.
 */
struct xg_regs {
    unsigned long r15, r14, r13, r12, r11, r10, r9, r8;
    unsigned long bp, di, si, dx, cx, bx, ax;
    unsigned long vector, error_code;
    unsigned long ip, cs, flags, sp, ss;
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
                  : "=a" (__res), "=D" (__i1)                           \
                  : "1" ((long)(a1))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall2(type, name, a1, a2)                                 \
({                                                                      \
    long __res, __i1, __i2;                                             \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=D" (__i1), "=S" (__i2)              \
                  : "1" ((long)(a1)), "2" ((long)(a2))                  \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall3(type, name, a1, a2, a3)                             \
({                                                                      \
    long __res, __i1, __i2, __i3;                                       \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=D" (__i1), "=S" (__i2), "=d" (__i3) \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall4(type, name, a1, a2, a3, a4)                         \
({                                                                      \
    long __res, __i1, __i2, __i3;                                       \
    register long __a4 asm ("r10") = (long)(a4);                        \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=D" (__i1), "=S" (__i2), "=d" (__i3),\
                    "+r" (__a4)                                         \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

#define _hypercall5(type, name, a1, a2, a3, a4, a5)                     \
({                                                                      \
    long __res, __i1, __i2, __i3;                                       \
    register long __a4 asm ("r10") = (long)(a4);                        \
    register long __a5 asm ("r8") = (long)(a5);                         \
    asm volatile (HC_CALL(name)                                         \
                  : "=a" (__res), "=D" (__i1), "=S" (__i2), "=d" (__i3),\
                    "+r" (__a4), "+r" (__a5)                            \
                  : "1" ((long)(a1)), "2" ((long)(a2)),                 \
                    "3" ((long)(a3))                                    \
                  : "memory");                                          \
    (type)__res;                                                        \
})

static inline int HYPERVISOR_update_va_mapping(unsigned long va, xg_pte_t pte,
                                               unsigned long flags)
{
    return _hypercall3(int, update_va_mapping, va, pte, flags);
}

static inline uint64_t xg_rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile ("rdtsc" : "=a" (lo), "=d" (hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif /* __ASSEMBLY__ */
#endif
