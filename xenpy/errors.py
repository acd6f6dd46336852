"""One root for every error xenpy reports to a *user* (bad file, config, stream, ring).

Guest mistakes are not exceptions: they become a negative errno returned to the
guest or a fault injected into it.  Only a bug in xenpy is a traceback.
"""


class XenpyError(Exception):
    """A user-facing error: the message names what is wrong and what was expected."""


class ElfError(XenpyError):
    """The kernel image is not a loadable Xen PV ELF."""


class ConfigError(XenpyError):
    """An xl.cfg file or command-line option is invalid."""


class BuildError(XenpyError):
    """The domain builder cannot lay out the domain (no room, unsupported mode...)."""


class CalibrationError(XenpyError):
    """This Unicorn build does not behave as xenpy requires."""


class StreamError(XenpyError):
    """A save file or migration stream is corrupt, truncated or unsupported."""


class ProtocolError(XenpyError):
    """A peer broke a wire protocol (xs_wire, gdb RSP, a shared ring)."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
