/*
 * traps_asm.S - fault sites and ring-3 code for the traps guest.
 *
 * Every instruction expected to fault has global labels on it and on the
 * instruction after it, plus a __fixup entry (fault ip, resume ip) that
 * the C hook uses to skip it.  The C side compares the ip Xen reported
 * with these labels, so a wrong ip in a bounce frame is caught.
 * The ring-3 code lives in .text.user, a page of its own that the guest
 * makes user-accessible.
 */
#include "xg_asm.h"
#include <xen/xen.h>

#define FIXUP(from, to)                 \
        .pushsection __fixup, "a";      \
        _WORD from, to;                 \
        .popsection

#ifdef __x86_64__
#define UNMAPPED_VA 0xFFFFFFFF83000000
#else
#define UNMAPPED_VA 0xC3000000
#endif

        .text

/* void traps_do_div0(void): divide by zero. */
GLOBAL(traps_do_div0)
        xor     %edx, %edx
        mov     $1, %eax
        xor     %ecx, %ecx
        .globl  traps_div0_insn, traps_div0_resume
traps_div0_insn:
        div     %ecx
traps_div0_resume:
        ret
        FIXUP(traps_div0_insn, traps_div0_resume)
ENDFN(traps_do_div0)

/* void traps_do_ud2(void) */
GLOBAL(traps_do_ud2)
        .globl  traps_ud2_insn, traps_ud2_resume
traps_ud2_insn:
        ud2
traps_ud2_resume:
        ret
        FIXUP(traps_ud2_insn, traps_ud2_resume)
ENDFN(traps_do_ud2)

/* void traps_do_int3(void): a trap, so Xen reports the ip after int3. */
GLOBAL(traps_do_int3)
        .globl  traps_int3_insn, traps_int3_after
traps_int3_insn:
        int3
traps_int3_after:
        ret
ENDFN(traps_do_int3)

/* unsigned long traps_do_read(unsigned long va): kernel read (#PF if unmapped). */
GLOBAL(traps_do_read)
#ifdef __x86_64__
        mov     %rdi, %rdx
#else
        mov     4(%esp), %edx
#endif
        xor     %eax, %eax
        .globl  traps_pf_insn, traps_pf_resume
traps_pf_insn:
        mov     (%_ASM_DX), %_ASM_AX
traps_pf_resume:
        ret
        FIXUP(traps_pf_insn, traps_pf_resume)
ENDFN(traps_do_read)

/* void traps_do_int81(void): no trap-table entry, so #GP((0x81 << 3) | 2). */
GLOBAL(traps_do_int81)
        .globl  traps_int81_insn, traps_int81_resume
traps_int81_insn:
        int     $0x81
traps_int81_resume:
        ret
        FIXUP(traps_int81_insn, traps_int81_resume)
ENDFN(traps_do_int81)

/* void traps_do_cli(void): privileged with vIOPL 0, so #GP(0). */
GLOBAL(traps_do_cli)
        .globl  traps_cli_insn, traps_cli_resume
traps_cli_insn:
        cli
traps_cli_resume:
        ret
        FIXUP(traps_cli_insn, traps_cli_resume)
ENDFN(traps_do_cli)

/* void traps_do_hlt(void): ring-0 only, so #GP(0). */
GLOBAL(traps_do_hlt)
        .globl  traps_hlt_insn, traps_hlt_resume
traps_hlt_insn:
        hlt
traps_hlt_resume:
        ret
        FIXUP(traps_hlt_insn, traps_hlt_resume)
ENDFN(traps_do_hlt)

/*
 * void traps_do_xen_cpuid(uint32_t leaf, uint32_t out[4]): CPUID through
 * Xen's forced-emulation prefix.  If the prefix is not honoured the ud2a
 * raises #UD; the fixup then resumes after the cpuid with out[] = 0.
 */
GLOBAL(traps_do_xen_cpuid)
#ifdef __x86_64__
        push    %rbx
        mov     %edi, %eax
        mov     %rsi, %r8
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        xor     %edx, %edx
#else
        push    %ebx
        push    %edi
        mov     12(%esp), %eax
        mov     16(%esp), %edi
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        xor     %edx, %edx
#endif
        .globl  traps_cpuid_insn, traps_cpuid_resume
traps_cpuid_insn:
        ud2a
        .ascii  "xen"
        cpuid
traps_cpuid_resume:
#ifdef __x86_64__
        mov     %eax, 0(%r8)
        mov     %ebx, 4(%r8)
        mov     %ecx, 8(%r8)
        mov     %edx, 12(%r8)
        pop     %rbx
#else
        mov     %eax, 0(%edi)
        mov     %ebx, 4(%edi)
        mov     %ecx, 8(%edi)
        mov     %edx, 12(%edi)
        pop     %edi
        pop     %ebx
#endif
        ret
        FIXUP(traps_cpuid_insn, traps_cpuid_resume)
ENDFN(traps_do_xen_cpuid)

/*
 * Ring-3 code: syscall 1 (int $0x80, eax=1), a user-mode #PF, a user-mode
 * cli (#GP(0)), then syscall 0, after which the kernel does not return here.
 */
        .section .text.user, "ax", @progbits
GLOBAL(traps_user_entry)
        mov     $1, %eax
        .globl  traps_user_int80_after
        int     $0x80
traps_user_int80_after:
        mov     $UNMAPPED_VA, %_ASM_BX
        .globl  traps_user_pf_insn, traps_user_pf_resume
traps_user_pf_insn:
        mov     (%_ASM_BX), %eax
traps_user_pf_resume:
        .globl  traps_user_cli_insn, traps_user_cli_resume
traps_user_cli_insn:
        cli
traps_user_cli_resume:
        xor     %eax, %eax
        int     $0x80
1:      jmp     1b
        FIXUP(traps_user_pf_insn, traps_user_pf_resume)
        FIXUP(traps_user_cli_insn, traps_user_cli_resume)
ENDFN(traps_user_entry)
