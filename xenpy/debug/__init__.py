"""Debugging guests: a gdb stub over a domain's vCPUs (target), hypercall and trap
catchpoints with the `monitor` commands (catch), the strace-like hypercall trace
(trace, decode), and what `xenpy run --gdb/--trace` wires together (session)."""
