"""xen/sched.h: SCHEDOP_* commands and SHUTDOWN_* reasons."""
import enum

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7


class Shutdown(enum.IntEnum):
    """SHUTDOWN_* reasons (sched_shutdown.reason)."""
    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5
