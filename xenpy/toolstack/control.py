"""The host control protocol: how `xenpy create/list/console/...` talk to `xenpy host`.

xl talks to libxl in-process and reaches the hypervisor through privcmd; here the
hypervisor lives in the `xenpy host` process, so the xl-like commands are clients of
a Unix stream socket it serves.  The wire format is deliberately small:

* a frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
  holding one object; a frame longer than ``MAX_FRAME`` breaks the connection
  (both ends refuse to buffer without bound);
* a request is ``{"req": id, "op": name, "args": {...}}``; every request gets exactly
  one reply with the same id, ``{"rep": id, "result": {...}}`` or
  ``{"rep": id, "error": "one line"}``, in the order the requests were sent;
* the host may also send unsolicited events, ``{"event": kind, "data": {...}}``
  (console output, the domain went away), interleaved with replies.

Byte strings (console data) travel base64-encoded.  ``ControlConnection`` is sans-IO
(feed bytes in, take messages out, get bytes to send); ``ControlClient`` is the thin
blocking socket adapter the commands use.  The host side is in ``hostd.py``.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from ..errors import LocalProtocolError, RemoteProtocolError, XenpyError

#: Largest frame either end accepts (a console snapshot is the biggest message).
MAX_FRAME = 8 << 20
_HEADER = struct.Struct(">I")

#: Environment variable naming the control socket (like XENSTORED_PATH for xenstored).
CONTROL_ENV = "XENPY_CONTROL"


class HostNotRunning(XenpyError):
    """No `xenpy host` answers at the control socket."""


class ControlError(XenpyError):
    """The host refused a request; the message is the host's one-line reason."""


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int
    message: str


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event`` returns this when no complete frame is buffered.
NEED_DATA = _NeedData()
Message = Union[Request, Reply, ErrorReply, Event]


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise RemoteProtocolError(f"{what}: expected a base64 string, found {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise RemoteProtocolError(f"{what}: expected base64, found {text[:40]!r}") from e


def _to_wire(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Request):
        return {"req": msg.id, "op": msg.op, "args": dict(msg.args)}
    if isinstance(msg, Reply):
        return {"rep": msg.id, "result": dict(msg.result)}
    if isinstance(msg, ErrorReply):
        return {"rep": msg.id, "error": msg.message}
    if isinstance(msg, Event):
        return {"event": msg.kind, "data": dict(msg.data)}
    raise LocalProtocolError(f"message: expected Request, Reply, ErrorReply or Event, "
                             f"found {type(msg).__name__}")


def _expect(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RemoteProtocolError(f"{what}: field {key!r} should be {kind.__name__}, "
                                  f"found {type(value).__name__}")
    return value


def _from_wire(obj: object) -> Message:
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"frame: expected a JSON object, found {type(obj).__name__}")
    if "req" in obj:
        return Request(_expect(obj, "req", int, "request"), _expect(obj, "op", str, "request"),
                       _expect(obj, "args", dict, "request"))
    if "rep" in obj:
        rid = _expect(obj, "rep", int, "reply")
        if "error" in obj:
            return ErrorReply(rid, _expect(obj, "error", str, "reply"))
        return Reply(rid, _expect(obj, "result", dict, "reply"))
    if "event" in obj:
        return Event(_expect(obj, "event", str, "event"), _expect(obj, "data", dict, "event"))
    raise RemoteProtocolError(f"frame: expected one of the keys req, rep, event; "
                              f"found {sorted(obj)[:5]}")


class ControlConnection:
    """One end of a control connection, without I/O (h11's shape).

    ``receive_data(b"")`` records end of stream; a frame cut short by it is a
    RemoteProtocolError.  After any protocol error the connection is unusable.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._eof = False
        self._next_id = 1

    def new_request(self, op: str, **args: Any) -> Request:
        """A request with a fresh id (ids only need to be unique per connection)."""
        req = Request(self._next_id, op, args)
        self._next_id += 1
        return req

    def send(self, msg: Message) -> bytes:
        try:
            body = json.dumps(_to_wire(msg), separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise LocalProtocolError(f"message: cannot encode as JSON: {e}") from e
        if len(body) > self.max_frame:
            raise LocalProtocolError(f"message: at most {self.max_frame} bytes, "
                                     f"found {len(body)}")
        return _HEADER.pack(len(body)) + body

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data: data after end of stream")
        self._buf += data
        if len(self._buf) >= _HEADER.size:
            self._check_length()

    def _check_length(self) -> int:
        (n,) = _HEADER.unpack_from(self._buf)
        if n > self.max_frame:
            raise RemoteProtocolError(f"frame length: at most {self.max_frame}, found {n}")
        return n

    def next_event(self) -> Message | _NeedData | None:
        """The next complete message, NEED_DATA, or None once the peer closed cleanly."""
        if len(self._buf) < _HEADER.size:
            return self._end_or_need()
        n = self._check_length()
        if len(self._buf) < _HEADER.size + n:
            return self._end_or_need()
        body = bytes(self._buf[_HEADER.size:_HEADER.size + n])
        del self._buf[:_HEADER.size + n]
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:   # nesting bombs too
            raise RemoteProtocolError(f"frame: expected UTF-8 JSON, found {body[:40]!r}") from None
        return _from_wire(obj)

    def _end_or_need(self) -> _NeedData | None:
        if not self._eof:
            return NEED_DATA
        if self._buf:
            raise RemoteProtocolError(f"stream: ended inside a frame ({len(self._buf)} bytes "
                                      f"of a partial frame)")
        return None


# --- default locations ----------------------------------------------------------------------

def runtime_dir() -> str:
    """Where a host puts its sockets: $XDG_RUNTIME_DIR/xenpy, /run/xenpy for root,
    else /tmp/xenpy-<uid> (Unix socket paths must stay under 108 bytes)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "xenpy")
    if os.geteuid() == 0:
        return "/run/xenpy"
    return f"/tmp/xenpy-{os.geteuid()}"


def default_control_path() -> str:
    return os.environ.get(CONTROL_ENV) or os.path.join(runtime_dir(), "control.sock")


def default_xenstored_path() -> str:
    return os.path.join(runtime_dir(), "xenstored.sock")


# --- the blocking client ------------------------------------------------------------------

class ControlClient:
    """A blocking client: ``call`` sends a request and returns its result; events
    that arrive meanwhile are queued for ``next_host_event``."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0) -> None:
        self.path = path or default_control_path()
        self.proto = ControlConnection()
        self.events: deque[Event] = deque()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            self.sock.close()
            raise HostNotRunning(
                f"no xenpy host is running at {self.path} ({e.strerror}); start one with "
                f"`xenpy host`, or point --control or ${CONTROL_ENV} at its socket") from None
        except OSError as e:
            self.sock.close()
            raise HostNotRunning(f"cannot reach the xenpy host at {self.path}: {e.strerror}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_request(self, op: str, **args: Any) -> int:
        req = self.proto.new_request(op, **args)
        self.sock.sendall(self.proto.send(req))
        return req.id

    def call(self, op: str, **args: Any) -> Mapping[str, Any]:
        rid = self.send_request(op, **args)
        while True:
            msg = self.receive()
            if isinstance(msg, Event):
                self.events.append(msg)
            elif isinstance(msg, Reply) and msg.id == rid:
                return msg.result
            elif isinstance(msg, ErrorReply) and msg.id == rid:
                raise ControlError(msg.message)
            elif isinstance(msg, Request):
                raise RemoteProtocolError(f"host sent a request ({msg.op!r}); hosts only reply")

    def receive(self) -> Message:
        """Block for the next message; HostNotRunning if the host went away."""
        while True:
            msg = self.proto.next_event()
            if msg is None:
                raise HostNotRunning(f"the xenpy host at {self.path} closed the connection")
            if msg is not NEED_DATA:
                return msg                      # type: ignore[return-value]
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise HostNotRunning(f"the xenpy host at {self.path} did not answer") from None
            except OSError as e:
                raise HostNotRunning(f"lost the xenpy host at {self.path}: {e.strerror}") from None
            self.proto.receive_data(data)
