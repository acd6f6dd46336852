; xenpy firmware for 32-bit PAE PV guests: code the hypervisor supplies to run inside
; the emulated CPU.  Intel syntax, assembled by keystone at start-up (xenpy/hv/firmware.py).
; Each `name:` starts a routine, placed 16-byte aligned in the page named by the last
; `@page` line; `{name}` in an operand is replaced by that routine's virtual address.
; Unicorn never delivers interrupts through the IDT and cannot change the CPL from a hook
; (unicorn-notes §0, §8), so ring changes use the CPU's own mechanisms: iretd outward,
; a call gate inward.

@page supervisor
; Ring 0 -> ring 1 at boot, and every iret the hypervisor performs for the guest: the
; hypervisor lays out [eip, cs, eflags(, esp, ss)] at esp and jumps here.
iret_tramp:
    iretd

; Reached through the call gate (GDT 0xe040, DPL 3) at ring 1 on the kernel stack:
; re-enter the hypervisor, which turns the pending user-mode event into a bounce frame.
gate_entry:
    int 0x83

@page user
; Ring 3 -> ring 1: the hypervisor points a user-mode vCPU here when it must bounce an
; event to the guest kernel.
user_gate:
    lcall [{user_gate_ptr}]

; The far pointer for user_gate: offset 0 (ignored by a call gate), selector 0xe043.
user_gate_ptr:
    .long 0
    .word 0xe043
