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
XENMEM_access_op = 21
XENMEM_add_to_physmap_batch = 23

XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn = 2
XENMAPSPACE_gmfn_range = 3
XENMAPSPACE_gmfn_foreign = 4
XENMAPSPACE_dev_mmio = 5
#: XENMAPIDX_grant_table_status: the idx bit selecting a v2 status frame.
XENMAPIDX_grant_table_status = 0x80000000

#: Bits of xen_memory_reservation.mem_flags (XENMEMF_*): address_bits in the low byte.
XENMEMF_address_bits_mask = 0xFF

# Layouts (struct formats) per guest width, checked against the C compiler in tests/mm.
#: struct xen_memory_reservation { handle(xen_pfn_t) extent_start; xen_ulong_t nr_extents;
#:   unsigned int extent_order; unsigned int mem_flags; domid_t domid; }
MEMORY_RESERVATION = {4: "<IIIIH2x", 8: "<QQIIH6x"}
#: struct xen_memory_exchange { reservation in, out; xen_ulong_t nr_exchanged; }
EXCHANGE_DONE_OFFSET = {4: 40, 8: 64}
#: struct xen_add_to_physmap { domid_t domid; u16 size; unsigned int space; xen_ulong_t idx;
#:   xen_pfn_t gpfn; }
ADD_TO_PHYSMAP = {4: "<HHIII", 8: "<HHIQQ"}
#: struct xen_memory_map { unsigned int nr_entries; handle(void) buffer; }
MEMORY_MAP = {4: "<II", 8: "<I4xQ"}
#: struct xen_machphys_mapping { xen_ulong_t v_start, v_end, max_mfn; }
MACHPHYS_MAPPING = {4: "<III", 8: "<QQQ"}
#: struct e820entry { u64 addr; u64 size; u32 type; } (packed)
E820_ENTRY = "<QQI"
