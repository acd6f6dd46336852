"""xenpy: a Xen-style paravirtualizing hypervisor on the Unicorn CPU emulator.

Guests use the real Xen PV ABI (the public headers in /usr/include/xen); Unicorn
executes guest code and this package is the hypervisor around it.
"""
from pathlib import Path

__version__ = "0.1.0"

#: The source tree (firmware/ and guests/ live beside the package).
ROOT = Path(__file__).resolve().parent.parent
