"""xen/grant_table.h: GNTTABOP_* and GNTST_* results."""
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

# Grant entry flags (grant_table.h).
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3

# Mapping flags (struct gnttab_map_grant_ref.flags).
GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

# gnttab_copy flags, gnttab_cache_flush ops.
GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1
GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31

#: Entry sizes: grant_entry_v1_t (flags, domid, frame) and grant_entry_v2_t (a union).
GRANT_ENTRY_V1_SIZE = 8
GRANT_ENTRY_V2_SIZE = 16
GRANT_STATUS_SIZE = 2          # grant_status_t (uint16_t), v2 only

# Layouts (struct module formats), per guest width where they differ.  Field order as in
# the header; `x` is padding.  Checked against the C compiler in tests/grant/test_abi.py.
#: struct gnttab_map_grant_ref { u64 host_addr; u32 flags; grant_ref_t ref; domid_t dom;
#:                               s16 status; grant_handle_t handle; u64 dev_bus_addr; }
MAP_GRANT_REF = "<QIIHhIQ"
#: struct gnttab_unmap_grant_ref { u64 host_addr; u64 dev_bus_addr; grant_handle_t handle; s16 status; }
UNMAP_GRANT_REF = "<QQIh2x"
#: struct gnttab_unmap_and_replace { u64 host_addr; u64 new_addr; grant_handle_t handle; s16 status; }
UNMAP_AND_REPLACE = "<QQIh2x"
#: struct gnttab_setup_table { domid_t dom; u32 nr_frames; s16 status; handle(xen_pfn_t) frame_list; }
SETUP_TABLE = {4: "<H2xIh2xI", 8: "<H2xIh6xQ"}
#: struct gnttab_query_size { domid_t dom; u32 nr_frames; u32 max_nr_frames; s16 status; }
QUERY_SIZE = "<H2xIIh2x"
#: struct gnttab_dump_table { domid_t dom; s16 status; }
DUMP_TABLE = "<Hh"
#: struct gnttab_transfer { xen_pfn_t mfn; domid_t domid; grant_ref_t ref; s16 status; }
TRANSFER = {4: "<IH2xIh2x", 8: "<QH2xIh6x"}
#: struct gnttab_copy { struct { union { grant_ref_t ref; xen_pfn_t gmfn; } u; domid_t domid;
#:   u16 offset; } source, dest; u16 len; u16 flags; s16 status; }
COPY = {4: "<IHHIHHHHh2x", 8: "<QHH4xQHH4xHHh2x"}
#: struct gnttab_set_version { u32 version; }
SET_VERSION = "<I"
#: struct gnttab_get_status_frames { u32 nr_frames; domid_t dom; s16 status; handle(u64) frame_list; }
GET_STATUS_FRAMES = {4: "<IHhI", 8: "<IHhQ"}
#: struct gnttab_get_version { domid_t dom; u16 pad; u32 version; }
GET_VERSION = "<H2xI"
#: struct gnttab_swap_grant_ref { grant_ref_t ref_a; grant_ref_t ref_b; s16 status; }
SWAP_GRANT_REF = "<IIh2x"
#: struct gnttab_cache_flush { union { u64 dev_bus_addr; grant_ref_t ref; } a; u16 offset;
#:                             u16 length; u32 op; }
CACHE_FLUSH = "<QHHI"
