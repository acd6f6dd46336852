"""Port I/O under the virtual IOPL: permitted I/O reads ~0, denied I/O is #GP(0) at the
instruction with the registers as they were (unicorn never faults I/O by itself)."""
from __future__ import annotations

import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from xenpy.abi.sched import Shutdown
from xenpy.abi.xen import FLAT_RING1_CS, FLAT_RING3_CS64, PAGE_SIZE
from xenpy.cli import resolve_kernel
from xenpy.hv.vcpu import TrapEntry
from xenpy.toolstack.builder import plan_layout
from xenpy.toolstack.elf import load_xen_elf


def _setup(domain_factory, kernel: str, iopl: int):
    run = domain_factory(kernel, memory_mib=8)
    d = run.domain
    v = d.vcpus[0]
    w64 = d.width == 8
    image = load_xen_elf(resolve_kernel(kernel))
    page = plan_layout(image, d.max_pages, d.width).virt_end - PAGE_SIZE
    ks = Ks(KS_ARCH_X86, KS_MODE_64 if w64 else KS_MODE_32)
    ax, bx, sp = ("rax", "rbx", "rsp") if w64 else ("eax", "ebx", "esp")
    body = bytes(ks.asm(f"mov edx, 0x80; in al, dx; mov byte ptr [{page + 0x400:#x}], al; "
                        "mov ebx, 0x1234", page)[0])
    io_at = page + 5
    # the "rest" after the I/O: power off (sched_op shutdown, reason at page+0x300)
    if w64:
        tail = "mov edi, 2; mov rsi, {r}; mov eax, 29; syscall; hlt"
    else:
        tail = "mov ebx, 2; mov ecx, {r}; mov eax, 29; int 0x82; hlt"
    code = body + bytes(ks.asm(tail.format(r=page + 0x300), page + len(body))[0])
    handler = bytes(ks.asm(tail.format(r=page + 0x300), page + 0x100)[0])
    v.gmem.write(page, code)
    v.gmem.write(page + 0x100, handler)
    v.gmem.write(page + 0x300, struct.pack("<I", Shutdown.crash if iopl else Shutdown.poweroff))
    v.trap_table[13] = TrapEntry(0, FLAT_RING3_CS64 if w64 else FLAT_RING1_CS, page + 0x100)
    v.iopl = iopl
    # the vCPU sits on the firmware's boot iret: point its frame's entry at our code
    v.gmem.write(v.cpu.reg(sp), page.to_bytes(d.width, "little"))
    return run, v, io_at, (ax, bx, sp)


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_denied_io_is_gp_at_the_instruction(domain_factory, kernel):
    run, v, io_at, (ax, bx, sp) = _setup(domain_factory, kernel, iopl=0)
    run.run(10)
    assert run.shutdown_reason == Shutdown.poweroff, run.domain.crash_message  # #GP handler ran
    assert v.cpu.reg(bx) != 0x1234          # the instructions after the in were rolled back
    w = v.domain.width
    sp_ = v.cpu.reg(sp)
    if w == 4:
        ec, eip = struct.unpack("<II", v.gmem.read(sp_, 8))
    else:
        _rcx, _r11, ec, eip = struct.unpack("<QQQQ", v.gmem.read(sp_, 32))
    assert (ec, eip) == (0, io_at)


@pytest.mark.parametrize("kernel", ["hello", "hello-x86_64"])
def test_permitted_io_reads_all_ones(domain_factory, kernel):
    run, v, io_at, (ax, bx, sp) = _setup(domain_factory, kernel, iopl=1)
    run.run(10)
    assert run.shutdown_reason == Shutdown.crash, run.domain.crash_message  # the tail, no #GP
    assert v.gmem.read(io_at - 5 + 0x400, 1) == b"\xff"     # no device: the read floats high


# a hypercall right after a denied port I/O, in the same translated block, once ran before the
# #GP (and its CPU effects were then rolled back: MMUEXT_NEW_BASEPTR left Unicorn on the old
# page directory while the hypervisor tracked the new one)
def test_hypercall_after_denied_io(domain_factory, bundled_guests):
    run = domain_factory("hello", memory_mib=8)
    d = run.domain; v = d.vcpus[0]
    image = load_xen_elf(resolve_kernel("hello"))
    page = plan_layout(image, d.max_pages, d.width).virt_end - PAGE_SIZE
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    # denied I/O, then (same block) a hypercall: sched_op(shutdown, reason@page+0x300)
    code = bytes(ks.asm(f"mov edx, 0x80; in al, dx; mov ebx, 2; mov ecx, {page+0x300:#x}; "
                        "mov eax, 29; int 0x82; hlt", page)[0])
    handler = bytes(ks.asm(f"mov ebx, 2; mov ecx, {page+0x304:#x}; mov eax, 29; int 0x82; hlt",
                           page + 0x100)[0])
    v.gmem.write(page, code); v.gmem.write(page + 0x100, handler)
    v.gmem.write(page + 0x300, struct.pack("<II", Shutdown.crash, Shutdown.poweroff))
    v.trap_table[13] = TrapEntry(0, FLAT_RING1_CS, page + 0x100)
    v.iopl = 0
    v.gmem.write(v.cpu.reg("esp"), page.to_bytes(4, "little"))
    run.run(10)
    assert run.shutdown_reason == Shutdown.poweroff   # only the #GP handler's hypercall
