"""xen/io/xenbus.h: enum xenbus_state, the split-driver handshake states in XenStore."""
from __future__ import annotations

import enum


class XenbusState(enum.IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2          # finished early init, waiting for the peer's details
    Initialised = 3       # frontend: ring and event channel published
    Connected = 4
    Closing = 5           # the device is being closed down
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8

    @classmethod
    def parse(cls, raw: bytes | None) -> "XenbusState":
        """A state node's value; absent or garbage reads as Unknown (as xenbus_read_driver_state)."""
        try:
            return cls(int(raw or b"0"))
        except ValueError:
            return cls.Unknown
