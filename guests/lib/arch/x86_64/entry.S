/*
 * entry.S (x86_64) - exception entry stubs, return through
 * HYPERVISOR_iret, and the user-mode round trip used by the traps guest.
 *
 * Xen's bounce frame for a 64-bit PV kernel (16-byte aligned) is, from the
 * top: RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS.  RCX and R11 are
 * there because Xen enters via SYSRET, so the stubs pop them back into
 * their registers first, then push a dummy error code where needed plus
 * the vector: one layout (struct xg_regs) for every trap.  The way back is
 * the iret stub, which pushes RCX, R11, RAX on top of our
 * FLAGS, RIP, CS, RFLAGS, RSP, SS (struct iret_context).
 */
#include "xg_asm.h"
#include <xen/xen.h>

#define HYPERCALL_IRET (hypercall_page + __HYPERVISOR_iret * 32)

.macro TRAP_STUB vec, has_ec
        .balign 32
        pop     %rcx
        pop     %r11
        .if !\has_ec
        pushq   $0
        .endif
        pushq   $\vec
        jmp     xg_trap_common
.endm

.macro SAVE_ALL
        push    %rax
        push    %rbx
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %rbp
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        cld
.endm

.macro RESTORE_ALL
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rbp
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rbx
        pop     %rax
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
        pop     %rcx
        pop     %r11
        pushq   $0
        pushq   $0x80
        jmp     xg_trap_common

xg_trap_common:
        push    %rax
        push    %rbx
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %rbp
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        cld
        mov     %rsp, %rdi              /* struct xg_regs * */
        mov     %rsp, %rbx
        and     $-16, %rsp
        call    xg_trap_dispatch
        mov     %rbx, %rsp
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rbp
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rbx
        pop     %rax
        add     $16, %rsp               /* vector, error code */
        pushq   $0                      /* flags: not VGCF_in_syscall */
        jmp     HYPERCALL_IRET

/*
 * Event upcall (CALLBACKTYPE_event).  Xen bounces here with events masked;
 * the 16-byte aligned frame is, from the top, RCX, R11, RIP, CS (saved
 * upcall mask in bits 32-39), RFLAGS (IF = !saved mask), RSP, SS.  RCX and
 * R11 go back into their registers, then we build a struct xg_regs (vector
 * -1 marks an upcall), run the C scan and leave through HYPERVISOR_iret
 * (flags 0: restore every register), which restores the upcall mask from
 * RFLAGS.IF in the same step as the return.
 */
GLOBAL(xg_hypervisor_callback)
        pop     %rcx
        pop     %r11
        pushq   $0                      /* error code */
        pushq   $-1                     /* vector: upcall */
        SAVE_ALL
        mov     %rsp, %rdi              /* struct xg_regs * */
        mov     %rsp, %rbx
        and     $-16, %rsp
        call    xg_evtchn_do_upcall
        mov     %rbx, %rsp
        RESTORE_ALL
        add     $16, %rsp               /* vector, error code */
        pushq   $0                      /* flags: not VGCF_in_syscall */
        jmp     HYPERCALL_IRET
ENDFN(xg_hypervisor_callback)

/*
 * Failsafe callback: Xen could not load a segment register while returning
 * to us; the frame is RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS.
 * Report it as a trap frame and crash - there is no sane way back.
 */
GLOBAL(xg_failsafe_callback)
        pop     %rcx
        pop     %r11
        add     $32, %rsp               /* DS ES FS GS */
        pushq   $0
        pushq   $-2                     /* vector: failsafe */
        SAVE_ALL
        mov     %rsp, %rdi
        and     $-16, %rsp
        call    xg_failsafe
1:      jmp     1b
ENDFN(xg_failsafe_callback)

/* long xg_enter_user(unsigned long ip, unsigned long sp) */
GLOBAL(xg_enter_user)
        mov     %rbx, xg_kctx + 0(%rip)
        mov     %rbp, xg_kctx + 8(%rip)
        mov     %r12, xg_kctx + 16(%rip)
        mov     %r13, xg_kctx + 24(%rip)
        mov     %r14, xg_kctx + 32(%rip)
        mov     %r15, xg_kctx + 40(%rip)
        mov     %rsp, xg_kctx + 48(%rip) /* points at our return address */
        pushq   $FLAT_USER_SS64
        pushq   %rsi                    /* RSP */
        pushq   $0x2                    /* RFLAGS: IF=0 keeps events masked */
        pushq   $FLAT_USER_CS64         /* RPL 3: Xen switches to user mode */
        pushq   %rdi                    /* RIP */
        pushq   $0                      /* flags */
        xor     %eax, %eax
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        xor     %edx, %edx
        xor     %esi, %esi
        xor     %edi, %edi
        xor     %ebp, %ebp
        xor     %r8d, %r8d
        xor     %r9d, %r9d
        xor     %r10d, %r10d
        xor     %r11d, %r11d
        jmp     HYPERCALL_IRET
ENDFN(xg_enter_user)

/* void xg_return_to_kernel(long value): resume xg_enter_user's caller. */
GLOBAL(xg_return_to_kernel)
        mov     %rdi, %rax
        mov     xg_kctx + 0(%rip), %rbx
        mov     xg_kctx + 8(%rip), %rbp
        mov     xg_kctx + 16(%rip), %r12
        mov     xg_kctx + 24(%rip), %r13
        mov     xg_kctx + 32(%rip), %r14
        mov     xg_kctx + 40(%rip), %r15
        mov     xg_kctx + 48(%rip), %rsp
        ret
ENDFN(xg_return_to_kernel)

        .bss
        .balign 16
xg_kctx:
        .skip   64
