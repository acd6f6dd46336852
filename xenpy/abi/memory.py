"""xen/memory.h: XENMEM_* sub-ops."""
XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_machphys_mfn_list = 5
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_machine_memory_map = 10
XENMEM_exchange = 11
XENMEM_machphys_mapping = 12
XENMEM_maximum_gpfn = 14

E820_RAM = 1
