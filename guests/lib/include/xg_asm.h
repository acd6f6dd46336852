/*
 * xg_asm.h - macros shared by the guests' assembly files.
 *
 * ELFNOTE emits one note of owner "Xen" into .note.Xen; the linker scripts
 * gather that section into a PT_NOTE segment, which is where libelf (Xen's
 * domain builder) looks for ENTRY, HYPERCALL_PAGE, VIRT_BASE and friends.
 */
#ifndef XG_ASM_H
#define XG_ASM_H

#include <xen/elfnote.h>

#ifdef __x86_64__
#define _WORD .quad
#define _ASM_AX rax
#define _ASM_BX rbx
#define _ASM_DX rdx
#else
#define _WORD .long
#define _ASM_AX eax
#define _ASM_BX ebx
#define _ASM_DX edx
#endif

#define ELFNOTE(type, desc)                     \
    .pushsection .note.Xen, "a", @note;         \
    .balign 4;                                  \
    .long 2f - 1f;      /* namesz */            \
    .long 4f - 3f;      /* descsz */            \
    .long type;                                 \
1:  .asciz "Xen";                               \
2:  .balign 4;                                  \
3:  desc;                                       \
4:  .balign 4;                                  \
    .popsection

#define GLOBAL(name) .globl name; .type name, @function; name:
#define ENDFN(name) .size name, . - name

#endif
