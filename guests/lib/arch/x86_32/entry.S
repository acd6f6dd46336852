/*
 * entry.S (x86_32) - exception entry stubs, return through
 * HYPERVISOR_iret, and the user-mode round trip used by the traps guest.
 *
 * Xen's bounce frame for a ring-1 guest is [error code], EIP, CS, EFLAGS
 * and, when the trap came from ring 3, ESP and SS (on the stack given to
 * HYPERVISOR_stack_switch).  Each stub pushes a dummy error code where the
 * CPU has none plus the vector, so xg_trap_common always sees one layout
 * (struct xg_regs).  The way back is the hypercall page's iret stub, which
 * expects EAX in %eax and EIP, CS, EFLAGS, [ESP, SS] on the stack.
 */
#include "xg_asm.h"
#include <xen/xen.h>

#define HYPERCALL_IRET (hypercall_page + __HYPERVISOR_iret * 32)

.macro TRAP_STUB vec, has_ec
        .balign 32
        .if !\has_ec
        pushl   $0
        .endif
        pushl   $\vec
        jmp     xg_trap_common
.endm

        .text
        .balign 32
        .globl  xg_trap_stubs
xg_trap_stubs:
        TRAP_STUB  0, 0         /* #DE */
        TRAP_STUB  1, 0         /* #DB */
        TRAP_STUB  2, 0         /* NMI */
        TRAP_STUB  3, 0         /* #BP */
        TRAP_STUB  4, 0         /* #OF */
        TRAP_STUB  5, 0         /* #BR */
        TRAP_STUB  6, 0         /* #UD */
        TRAP_STUB  7, 0         /* #NM */
        TRAP_STUB  8, 1         /* #DF */
        TRAP_STUB  9, 0         /* coprocessor segment overrun */
        TRAP_STUB 10, 1         /* #TS */
        TRAP_STUB 11, 1         /* #NP */
        TRAP_STUB 12, 1         /* #SS */
        TRAP_STUB 13, 1         /* #GP */
        TRAP_STUB 14, 1         /* #PF */
        TRAP_STUB 15, 0         /* reserved */
        TRAP_STUB 16, 0         /* #MF */
        TRAP_STUB 17, 1         /* #AC */
        TRAP_STUB 18, 0         /* #MC */
        TRAP_STUB 19, 0         /* #XM */
        .balign 32
        .globl  xg_trap_stub_int80
xg_trap_stub_int80:
        pushl   $0
        pushl   $0x80
        jmp     xg_trap_common

xg_trap_common:
        pushal
        cld
        mov     %esp, %eax
        push    %eax                    /* struct xg_regs * */
        call    xg_trap_dispatch
        add     $4, %esp
        popal
        add     $8, %esp                /* vector, error code */
        jmp     HYPERCALL_IRET

/*
 * Event upcall (CALLBACKTYPE_event).  Xen bounces here with events masked
 * and the same frame as an exception without error code: EIP, CS (saved
 * upcall mask in bits 16-23), EFLAGS (IF = !saved mask).  We build a
 * struct xg_regs (vector -1 marks an upcall), run the C scan and leave
 * through HYPERVISOR_iret, which restores the upcall mask from EFLAGS.IF
 * in the same step as the return, so no event slips in between.
 */
GLOBAL(xg_hypervisor_callback)
        pushl   $0                      /* error code */
        pushl   $-1                     /* vector: upcall */
        pushal
        cld
        mov     %esp, %eax
        push    %eax                    /* struct xg_regs * */
        call    xg_evtchn_do_upcall
        add     $4, %esp
        popal
        add     $8, %esp
        jmp     HYPERCALL_IRET
ENDFN(xg_hypervisor_callback)

/*
 * Failsafe callback: Xen could not load a segment register while returning
 * to us; the frame is DS, ES, FS, GS, EIP, CS, EFLAGS[, ESP, SS].  Drop the
 * segments and report it as a trap frame - there is no sane way back.
 */
GLOBAL(xg_failsafe_callback)
        mov     $FLAT_KERNEL_DS, %eax
        mov     %eax, %ds
        mov     %eax, %es
        add     $16, %esp               /* DS ES FS GS */
        pushl   $0
        pushl   $-2                     /* vector: failsafe */
        pushal
        cld
        mov     %esp, %eax
        push    %eax
        call    xg_failsafe
1:      jmp     1b
ENDFN(xg_failsafe_callback)

/* long xg_enter_user(unsigned long ip, unsigned long sp) */
GLOBAL(xg_enter_user)
        mov     4(%esp), %ecx
        mov     8(%esp), %edx
        mov     %ebx, xg_kctx + 0
        mov     %esi, xg_kctx + 4
        mov     %edi, xg_kctx + 8
        mov     %ebp, xg_kctx + 12
        mov     %esp, xg_kctx + 16      /* points at our return address */
        pushl   $FLAT_USER_SS
        pushl   %edx                    /* ESP */
        pushl   $0x2                    /* EFLAGS: IF=0 keeps events masked */
        pushl   $FLAT_USER_CS
        pushl   %ecx                    /* EIP */
        /* iret to ring 3 nulls DPL-1 data segments: load user ones. */
        mov     $FLAT_USER_DS, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %fs
        mov     %eax, %gs
        xor     %eax, %eax
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        xor     %edx, %edx
        xor     %esi, %esi
        xor     %edi, %edi
        xor     %ebp, %ebp
        jmp     HYPERCALL_IRET
ENDFN(xg_enter_user)

/* void xg_return_to_kernel(long value): resume xg_enter_user's caller. */
GLOBAL(xg_return_to_kernel)
        mov     4(%esp), %eax
        mov     $FLAT_KERNEL_DS, %ecx
        mov     %ecx, %ds
        mov     %ecx, %es
        mov     %ecx, %fs
        mov     %ecx, %gs
        mov     xg_kctx + 0, %ebx
        mov     xg_kctx + 4, %esi
        mov     xg_kctx + 8, %edi
        mov     xg_kctx + 12, %ebp
        mov     xg_kctx + 16, %esp
        ret
ENDFN(xg_return_to_kernel)

        .bss
        .balign 16
xg_kctx:
        .skip   32
