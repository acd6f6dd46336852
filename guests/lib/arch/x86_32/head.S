/*
 * head.S (x86_32 PAE) - ELF notes, entry point and hypercall page.
 *
 * Xen enters _start in ring 1 with %esi = start_info VA, %esp = a boot
 * stack the domain builder allocated and events masked.  We switch to our
 * own stack, zero .bss and hand start_info to xg_c_start().
 */
#include "xg_asm.h"

#define VIRT_BASE 0xC0000000

ELFNOTE(XEN_ELFNOTE_GUEST_OS,       .asciz "xenpy-test")
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION,  .asciz "0.1")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION,    .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER,         .asciz "generic")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE,      _WORD VIRT_BASE)
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET,   _WORD VIRT_BASE)
ELFNOTE(XEN_ELFNOTE_ENTRY,          _WORD _start)
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, _WORD hypercall_page)
ELFNOTE(XEN_ELFNOTE_PAE_MODE,       .asciz "yes")
ELFNOTE(XEN_ELFNOTE_FEATURES,       .asciz "")

        .section .text.head, "ax", @progbits
        .code32
GLOBAL(_start)
        cld
        mov     %esi, %ebx              /* keep start_info across the clear */
        mov     $__bss_start, %edi
        mov     $__bss_end, %ecx
        sub     %edi, %ecx
        xor     %eax, %eax
        rep stosb
        mov     $xg_boot_stack_top, %esp
        xor     %ebp, %ebp
        push    %ebx
        call    xg_c_start
1:      hlt                             /* not reached: xg_c_start shuts down */
        jmp     1b
ENDFN(_start)

/* Filled in by Xen (one 32-byte stub per hypercall); must be page aligned. */
        .section .text.hypercall_page, "ax", @progbits
        .balign 4096
        .globl  hypercall_page
        .type   hypercall_page, @object
hypercall_page:
        .fill   4096, 1, 0xcc
        .size   hypercall_page, 4096

        .section .bss.stack, "aw", @nobits
        .balign 4096
        .globl  xg_boot_stack, xg_boot_stack_top
xg_boot_stack:
        .skip   16384
xg_boot_stack_top:
