"""xen/physdev.h: the PHYSDEVOP_* a PV domU uses."""
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
