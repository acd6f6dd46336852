"""gdb command handling against a Target, still without I/O.

`GdbStub.receive_data(bytes) -> bytes` consumes what gdb sent and returns what to write
back; when a command resumed the guest, `running` becomes True and the I/O adapter must
wait for `Target.wait_stop` and pass the event to `stopped(event) -> bytes`.  The stub
is all-stop: while running, gdb only sends Ctrl-C, which becomes `Target.interrupt()`.

Every breakpoint inserted through Z is remembered, so a vanished debugger (`disconnect`)
or a detach leaves no breakpoint behind in the guest.  Errors the Target reports
(MemoryAccessError, an unknown thread or register) become ``Enn`` replies; a malformed
packet gets ``E22`` (EINVAL); an unknown one the empty reply, as the protocol asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from xenpy.debug.gdbstub import rsp
from xenpy.debug.gdbstub.target import SIGTRAP, BpKind, MemoryAccessError, Resume, StopEvent, Target
from xenpy.debug.gdbstub.xml import TargetDescription, target_description
from unicorn import UcError

from xenpy.errors import RemoteProtocolError, XenpyError

log = logging.getLogger("xenpy.debug.gdbstub")

PACKET_SIZE = 0x4000
PAGE_SIZE = 0x1000
E_FAULT = b"E0e"  # EFAULT: unmapped memory
E_INVAL = b"E16"  # EINVAL: a malformed packet
E_SRCH = b"E03"  # ESRCH: no such thread
OK = b"OK"


class _BadPacket(Exception):
    """Internal: the packet is malformed; answered with E_INVAL."""


@dataclass(slots=True)
class _Session:
    g_thread: int = 1  # thread for register/memory access (Hg)
    c_thread: int = -1  # thread for legacy s/c (Hc)
    last_stop: StopEvent | None = None
    inserted: set[tuple[BpKind, int, int]] = field(default_factory=set)


def _hex_int(field_: bytes, what: str) -> int:
    try:
        return int(field_, 16)
    except ValueError:
        raise _BadPacket(f"{what}: expected hex, got {field_!r}") from None


def _thread_id(field_: bytes) -> int:
    """gdb thread-id: -1 all, 0 any, else positive hex (we do not advertise multiprocess)."""
    if field_ == b"-1":
        return -1
    return _hex_int(field_, "thread id")


def _le_hex(value: int | None, size: int) -> bytes:
    if value is None:
        return b"xx" * size
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex().encode()


def _parse_le(hexdata: bytes, what: str) -> int | None:
    if hexdata and set(hexdata) == {ord("x")}:
        return None
    try:
        return int.from_bytes(bytes.fromhex(hexdata.decode("ascii")), "little")
    except ValueError:
        raise _BadPacket(f"{what}: expected little-endian hex, got {hexdata!r}") from None


class GdbStub:
    """Answers gdb's packets by calling a Target (see module docstring)."""

    def __init__(self, target: Target, *, packet_size: int = PACKET_SIZE) -> None:
        self.target = target
        self.tdesc: TargetDescription = target_description(target.arch)
        self.packet_size = packet_size
        self.conn = rsp.RspConnection(max_payload=packet_size)
        self.running = False
        self.closed = False
        self._session = _Session()

    # ---- I/O-facing API ----------------------------------------------------------
    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from gdb; returns the bytes to send back."""
        self.conn.receive_data(data)
        out = bytearray()
        while not self.closed:
            event = self.conn.next_event()
            if event is rsp.NEED_DATA:
                break
            if isinstance(event, rsp.Interrupt):
                if self.running:
                    self.target.interrupt()
            elif isinstance(event, rsp.ChecksumError):
                log.debug("gdb packet with bad checksum %s (computed %02x)", event.expected, event.computed)
            elif isinstance(event, rsp.Packet):
                out += self.conn.data_to_send()
                out += self._dispatch(event.data)
        out += self.conn.data_to_send()
        return bytes(out)

    def stopped(self, event: StopEvent) -> bytes:
        """The guest stopped after a resume: returns the stop reply to send."""
        self.running = False
        self._session.last_stop = event
        if event.reason != "exited":
            self._session.g_thread = event.vcpu + 1
        else:
            self.closed = True
        return self.conn.send(self._stop_reply(event))

    def disconnect(self) -> None:
        """gdb went away without D: remove its breakpoints and let the guest run on."""
        if self.closed:
            return
        self.closed = True
        self._remove_all_breakpoints()
        self.target.detach()

    # ---- dispatch ----------------------------------------------------------------
    def _dispatch(self, data: bytes) -> bytes:
        try:
            replies = self._handle(data)
        except _BadPacket as exc:
            log.debug("malformed gdb packet %r: %s", data[:60], exc)
            replies = [E_INVAL]
        except RemoteProtocolError as exc:
            log.debug("malformed gdb packet %r: %s", data[:60], exc)
            replies = [E_INVAL]
        except MemoryAccessError:
            replies = [E_FAULT]
        except (XenpyError, UcError, ValueError, OverflowError) as exc:
            # an argument the target refused (e.g. a breakpoint outside the address space):
            # an error reply, never the end of the stub thread with the domain held
            log.debug("gdb packet %r refused: %s", data[:60], exc)
            replies = [E_INVAL]
        out = bytearray()
        for reply in replies:
            if isinstance(reply, _Raw):
                out += self.conn.send(reply.data, rle=False)
            else:
                out += self.conn.send(reply)
        if data == b"QStartNoAckMode":
            self.conn.start_no_ack()
        return bytes(out)

    def _handle(self, data: bytes) -> Sequence[bytes | _Raw]:
        if not data:
            return [b""]
        head = data[:1]
        if head == b"q" or head == b"Q":
            return self._query(data)
        if head == b"v":
            return self._v_packet(data)
        handler = self._SIMPLE.get(head)
        if handler is None:
            return [b""]
        return handler(self, data[1:])

    # ---- queries -----------------------------------------------------------------
    def _query(self, data: bytes) -> Sequence[bytes | _Raw]:
        name, _, args = data.partition(b":")
        if name == b"qSupported":
            return [
                b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;vContSupported+"
                % self.packet_size
            ]
        if name == b"QStartNoAckMode":
            return [OK]
        if name == b"qXfer":
            return self._qxfer(args)
        if name == b"qAttached":
            return [b"1"]
        if name == b"qC":
            return [b"QC%x" % self._current_thread()]
        if name == b"qfThreadInfo":
            return [b"m" + b",".join(b"%x" % (v + 1) for v in self.target.threads())]
        if name == b"qsThreadInfo":
            return [b"l"]
        if data.startswith(b"qThreadExtraInfo,"):
            tid = _thread_id(data[len(b"qThreadExtraInfo,"):])
            if self._vcpu(tid) is None:
                return [E_SRCH]
            return [f"vcpu {tid - 1}".encode().hex().encode()]
        if data.startswith(b"qRcmd,"):
            return self._monitor(data[len(b"qRcmd,"):])
        return [b""]

    def _qxfer(self, args: bytes) -> Sequence[bytes | _Raw]:
        parts = args.split(b":")
        if len(parts) != 4 or parts[0] != b"features" or parts[1] != b"read":
            return [b""]
        if parts[2] != b"target.xml":
            return [b"E00"]
        off_s, _, len_s = parts[3].partition(b",")
        offset, length = _hex_int(off_s, "qXfer offset"), _hex_int(len_s, "qXfer length")
        doc = self.tdesc.xml.encode()
        chunk = doc[offset:offset + max(0, min(length, self.packet_size // 2 - 8))]
        more = offset + len(chunk) < len(doc)
        return [_Raw((b"m" if more else b"l") + rsp.escape(chunk))]

    def _monitor(self, hexcmd: bytes) -> list[bytes]:
        try:
            command = bytes.fromhex(hexcmd.decode("ascii")).decode("utf-8", "replace")
        except ValueError:
            raise _BadPacket(f"qRcmd: expected hex command, got {hexcmd[:40]!r}") from None
        try:
            text = self.target.monitor(command)
        except XenpyError as exc:
            text = f"{exc}\n"
        raw = text.encode()
        step = max(1, (self.packet_size - 8) // 2)
        replies: list[bytes] = [b"O" + raw[i:i + step].hex().encode() for i in range(0, len(raw), step)]
        return replies + [OK]

    # ---- v packets -----------------------------------------------------------------
    def _v_packet(self, data: bytes) -> list[bytes]:
        if data == b"vCont?":
            return [b"vCont;c;C;s;S;t"]
        if data.startswith(b"vCont;"):
            return self._vcont(data[len(b"vCont;"):])
        if data.startswith(b"vKill"):
            self._kill()
            return [OK]
        return [b""]

    def _vcont(self, spec: bytes) -> list[bytes]:
        threads = [v + 1 for v in self.target.threads()]
        assigned: dict[int, bytes] = {}
        for item in spec.split(b";"):
            action, _, tid_s = item.partition(b":")
            kind = action[:1]
            if kind not in (b"c", b"C", b"s", b"S", b"t"):
                raise _BadPacket(f"vCont action: expected c, C, s, S or t, got {action!r}")
            targets = threads if not tid_s or _thread_id(tid_s) == -1 else [_thread_id(tid_s)]
            for tid in targets:
                if tid not in threads:
                    return [E_SRCH]
                assigned.setdefault(tid, kind.lower())
        step = frozenset(t - 1 for t, k in assigned.items() if k == b"s")
        cont = frozenset(t - 1 for t, k in assigned.items() if k == b"c")
        if not step and not cont:
            return [E_INVAL]
        return self._resume(Resume(step=step, cont=cont))

    # ---- simple one-letter packets -------------------------------------------------
    def _stop_status(self, _: bytes) -> list[bytes]:
        last = self._session.last_stop
        if last is None:
            last = StopEvent(vcpu=self._current_thread() - 1, signal=SIGTRAP)
        return [self._stop_reply(last)]

    def _set_thread(self, args: bytes) -> list[bytes]:
        op, tid = args[:1], _thread_id(args[1:])
        if tid > 0 and self._vcpu(tid) is None:
            return [E_SRCH]
        if op == b"g":
            self._session.g_thread = tid
        elif op == b"c":
            self._session.c_thread = tid
        else:
            raise _BadPacket(f"H operation: expected g or c, got {op!r}")
        return [OK]

    def _thread_alive(self, args: bytes) -> list[bytes]:
        return [OK] if self._vcpu(_thread_id(args)) is not None else [E_SRCH]

    def _read_all_registers(self, _: bytes) -> list[bytes]:
        values = self.target.read_registers(self._g_vcpu())
        return [b"".join(_le_hex(values.get(r.name), r.size) for r in self.tdesc.registers)]

    def _write_all_registers(self, args: bytes) -> list[bytes]:
        vcpu, pos = self._g_vcpu(), 0
        for reg in self.tdesc.registers:
            chunk = args[pos:pos + 2 * reg.size]
            if len(chunk) < 2 * reg.size:
                break  # gdb may send a short G; the rest stays as it is
            pos += 2 * reg.size
            value = _parse_le(chunk, reg.name)
            if value is not None:
                self.target.write_register(vcpu, reg.name, value)
        return [OK]

    def _read_register(self, args: bytes) -> list[bytes]:
        num = _hex_int(args, "register number")
        if num >= len(self.tdesc.registers):
            return [E_INVAL]
        reg = self.tdesc.registers[num]
        return [_le_hex(self.target.read_registers(self._g_vcpu()).get(reg.name), reg.size)]

    def _write_register(self, args: bytes) -> list[bytes]:
        num_s, sep, value_s = args.partition(b"=")
        num = _hex_int(num_s, "register number")
        if not sep or num >= len(self.tdesc.registers):
            return [E_INVAL]
        reg = self.tdesc.registers[num]
        if len(value_s) != 2 * reg.size:
            raise _BadPacket(f"register {reg.name}: expected {2 * reg.size} hex digits, got {len(value_s)}")
        value = _parse_le(value_s, reg.name)
        if value is not None:
            self.target.write_register(self._g_vcpu(), reg.name, value)
        return [OK]

    def _addr_len(self, args: bytes) -> tuple[int, int]:
        addr_s, sep, len_s = args.partition(b",")
        if not sep:
            raise _BadPacket(f"memory packet: expected ADDR,LENGTH, got {args[:40]!r}")
        return _hex_int(addr_s, "address"), _hex_int(len_s, "length")

    def _read_mem(self, args: bytes) -> list[bytes]:
        addr, length = self._addr_len(args)
        length = min(length, (self.packet_size - 8) // 2)
        vcpu = self._g_vcpu()
        try:
            return [self.target.read_memory(vcpu, addr, length).hex().encode()]
        except MemoryAccessError:
            pass
        # Partial read: gdb accepts fewer bytes, so return the readable prefix page by page.
        data = bytearray()
        while len(data) < length:
            cur = addr + len(data)
            n = min(length - len(data), PAGE_SIZE - cur % PAGE_SIZE)
            try:
                data += self.target.read_memory(vcpu, cur, n)
            except MemoryAccessError:
                break
        return [data.hex().encode()] if data else [E_FAULT]

    def _write_mem_hex(self, args: bytes) -> list[bytes]:
        head, sep, hexdata = args.partition(b":")
        addr, length = self._addr_len(head)
        try:
            data = bytes.fromhex(hexdata.decode("ascii"))
        except ValueError:
            raise _BadPacket(f"M data: expected hex, got {hexdata[:40]!r}") from None
        return self._write_mem(addr, length, data, sep)

    def _write_mem_binary(self, args: bytes) -> list[bytes]:
        head, sep, raw = args.partition(b":")
        addr, length = self._addr_len(head)
        return self._write_mem(addr, length, rsp.unescape(raw), sep)

    def _write_mem(self, addr: int, length: int, data: bytes, sep: bytes) -> list[bytes]:
        if not sep or len(data) != length:
            raise _BadPacket(f"memory write at {addr:#x}: expected {length} bytes, got {len(data)}")
        if length:
            self.target.write_memory(self._g_vcpu(), addr, data)
        return [OK]

    def _breakpoint(self, args: bytes, insert: bool) -> list[bytes]:
        fields = args.split(b";")[0].split(b",")
        if len(fields) != 3:
            raise _BadPacket(f"Z/z packet: expected TYPE,ADDR,KIND, got {args[:40]!r}")
        kind_n = _hex_int(fields[0], "breakpoint type")
        if kind_n > BpKind.ACCESS:
            return [b""]
        kind, addr, length = BpKind(kind_n), _hex_int(fields[1], "address"), _hex_int(fields[2], "kind")
        if not 0 <= addr < 1 << 64 or not 0 <= length <= 1 << 16 or addr + length > 1 << 64:
            raise _BadPacket(f"Z/z packet: expected an address and length in the address "
                             f"space, got {addr:#x},{length:#x}")
        key = (kind, addr, length)
        if insert:
            if not self.target.insert_breakpoint(kind, addr, length):
                return [b""]
            self._session.inserted.add(key)
        else:
            if not self.target.remove_breakpoint(kind, addr, length):
                return [b""]
            self._session.inserted.discard(key)
        return [OK]

    def _continue(self, args: bytes) -> list[bytes]:
        return self._legacy_resume(args, step=False)

    def _step(self, args: bytes) -> list[bytes]:
        return self._legacy_resume(args, step=True)

    def _continue_signal(self, args: bytes) -> list[bytes]:
        _, _, addr = args.partition(b";")  # the signal cannot be delivered to a guest: drop it
        return self._legacy_resume(addr, step=False)

    def _step_signal(self, args: bytes) -> list[bytes]:
        _, _, addr = args.partition(b";")
        return self._legacy_resume(addr, step=True)

    def _legacy_resume(self, addr_s: bytes, step: bool) -> list[bytes]:
        tid = self._session.c_thread
        vcpu = tid - 1 if tid > 0 else self._current_thread() - 1
        if addr_s:
            self.target.write_register(vcpu, self.tdesc.pc_name, _hex_int(addr_s, "resume address"))
        if step:
            return self._resume(Resume(step=frozenset({vcpu})))
        return self._resume(Resume(cont=frozenset(v for v in self.target.threads())))

    def _detach(self, _: bytes) -> list[bytes]:
        self._remove_all_breakpoints()
        self.target.detach()
        self.closed = True
        return [OK]

    def _kill_packet(self, _: bytes) -> list[bytes]:
        self._kill()
        return []  # 'k' has no reply

    _SIMPLE: ClassVar[dict[bytes, Callable[[GdbStub, bytes], list[bytes]]]] = {
        b"?": _stop_status,
        b"H": _set_thread,
        b"T": _thread_alive,
        b"g": _read_all_registers,
        b"G": _write_all_registers,
        b"p": _read_register,
        b"P": _write_register,
        b"m": _read_mem,
        b"M": _write_mem_hex,
        b"X": _write_mem_binary,
        b"Z": lambda self, a: self._breakpoint(a, True),
        b"z": lambda self, a: self._breakpoint(a, False),
        b"c": _continue,
        b"s": _step,
        b"C": _continue_signal,
        b"S": _step_signal,
        b"D": _detach,
        b"k": _kill_packet,
    }

    # ---- helpers -------------------------------------------------------------------
    def _resume(self, action: Resume) -> list[bytes]:
        if self.running:
            return [E_INVAL]
        self.running = True
        self.target.resume(action)
        return []  # the reply is the stop packet, sent by `stopped`

    def _kill(self) -> None:
        self._session.inserted.clear()
        self.target.kill()
        self.closed = True

    def _remove_all_breakpoints(self) -> None:
        for kind, addr, length in sorted(self._session.inserted):
            try:
                self.target.remove_breakpoint(kind, addr, length)
            except MemoryAccessError:
                log.debug("breakpoint at %#x vanished with its mapping", addr)
        self._session.inserted.clear()

    def _vcpu(self, tid: int) -> int | None:
        return tid - 1 if tid > 0 and tid - 1 in self.target.threads() else None

    def _current_thread(self) -> int:
        tid = self._session.g_thread
        if tid > 0 and self._vcpu(tid) is not None:
            return tid
        return self.target.threads()[0] + 1

    def _g_vcpu(self) -> int:
        return self._current_thread() - 1

    def _stop_reply(self, event: StopEvent) -> bytes:
        if event.reason == "exited":
            if event.exit_status is not None:
                return b"W%02x" % (event.exit_status & 0xFF)
            return b"X%02x" % (event.signal & 0xFF)
        reply = b"T%02xthread:%x;" % (event.signal & 0xFF, event.vcpu + 1)
        if event.reason in ("swbreak", "hwbreak"):
            reply += event.reason.encode() + b":;"
        elif event.reason in ("watch", "rwatch", "awatch"):
            reply += b"%s:%x;" % (event.reason.encode(), event.address or 0)
        return reply


@dataclass(frozen=True, slots=True)
class _Raw:
    """A reply already binary-escaped: sent without run-length encoding."""

    data: bytes
