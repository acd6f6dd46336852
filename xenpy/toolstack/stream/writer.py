"""Sans-IO writer: typed headers and records in, bytes out.

``StreamWriter.send(item)`` checks that ``item`` may come next (the same Sequencer
the reader uses, so whatever the writer emits the reader accepts) and returns its
encoding; the caller writes the bytes wherever it likes.  Asking for something the
format does not allow at that point raises LocalProtocolError; a record with bad
field values cannot even be constructed (StreamError from its dataclass).
"""
from __future__ import annotations

from xenpy.errors import LocalProtocolError, StreamError

from .framing import Record, frame
from .sequence import Expect, Sequencer, StreamFormat


def write_record(record: Record) -> bytes:
    """One framed libxc or libxl record (header, body, zero padding), unsequenced."""
    return frame(record.REC_TYPE, record.encode_body())


def encode(item: object) -> bytes:
    """The wire form of any header or record, without order checks."""
    if hasattr(item, "encode_body"):
        return write_record(item)  # type: ignore[arg-type]
    if hasattr(item, "encode"):
        data = item.encode()
        if isinstance(data, bytes):
            return data
    raise LocalProtocolError(f"item: Expected a stream header or record, got {type(item).__name__}")


class StreamWriter:
    """Emits a well-ordered stream one header/record at a time."""

    def __init__(self, fmt: StreamFormat = "xl", checkpointed: bool = False) -> None:
        self._seq = Sequencer(fmt, checkpointed)

    @property
    def expecting(self) -> Expect:
        return self._seq.state

    @property
    def done(self) -> bool:
        return self._seq.state is Expect.DONE

    def send(self, item: object) -> bytes:
        """Bytes for ``item``; LocalProtocolError if it may not come next."""
        data = encode(item)
        try:
            self._seq.accept(item)
        except StreamError as exc:
            raise LocalProtocolError(f"cannot write {type(item).__name__} now: {exc}") from None
        return data

    def send_all(self, items: list[object] | tuple[object, ...]) -> bytes:
        return b"".join(self.send(item) for item in items)
