; xenpy firmware for 64-bit PV guests (Intel syntax, assembled by keystone; see pv32.s).
; A 64-bit PV kernel runs at CPL 3 like its user processes (Xen's x86-64 PV model): the
; only privilege change is the one at boot, from Unicorn's initial CPL 0 down to 3.

@page supervisor
; Boot: the hypervisor lays out [rip, cs, rflags, rsp, ss] at rsp and starts here.
iret_tramp:
    iretq
