/*
 * gnttab.c - a v1 grant table of XG_GNTTAB_FRAMES frames, and mapping others' grants.
 *
 * Granting: fill domid and frame, then (after a write barrier) the flags.
 * Revoking: clear the flags only if Xen has not marked the entry in use
 * (GTF_reading/GTF_writing) — a cmpxchg loop, as Linux's
 * gnttab_end_foreign_access_ref does.
 */
#include "xg_mm.h"

static char gnttab_pages[XG_GNTTAB_FRAMES][XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static grant_entry_v1_t *gnttab;

long xg_gnttab_init(void)
{
    struct gnttab_setup_table setup;
    xen_pfn_t frames[XG_GNTTAB_FRAMES];
    long rc;

    memset(frames, 0, sizeof(frames));
    setup.dom = DOMID_SELF;
    setup.nr_frames = XG_GNTTAB_FRAMES;
    set_xen_guest_handle(setup.frame_list, frames);
    rc = HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1);
    if (rc == 0 && setup.status != GNTST_okay)
        rc = setup.status;
    for (unsigned int i = 0; rc == 0 && i < XG_GNTTAB_FRAMES; i++)
        rc = xg_map_mfn(gnttab_pages[i], frames[i],
                        XG_PAGE_PRESENT | XG_PAGE_RW | XG_PAGE_ACCESSED | XG_PAGE_DIRTY);
    if (rc == 0)
        gnttab = (grant_entry_v1_t *)gnttab_pages;
    return rc;
}

void xg_gnttab_grant(grant_ref_t ref, domid_t domid, unsigned long mfn, int readonly)
{
    gnttab[ref].domid = domid;
    gnttab[ref].frame = (uint32_t)mfn;
    xg_wmb();
    gnttab[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
}

uint16_t xg_gnttab_flags(grant_ref_t ref)
{
    return *(volatile uint16_t *)&gnttab[ref].flags;
}

int xg_gnttab_end(grant_ref_t ref)
{
    uint16_t flags, nflags = xg_gnttab_flags(ref);

    do {
        flags = nflags;
        if (flags & (GTF_reading | GTF_writing))
            return -1;
        nflags = __sync_val_compare_and_swap(&gnttab[ref].flags, flags, 0);
    } while (nflags != flags);
    return 0;
}

int16_t xg_gnttab_map(domid_t dom, grant_ref_t ref, unsigned long va, int readonly,
                      grant_handle_t *handle)
{
    struct gnttab_map_grant_ref op;
    long rc;

    memset(&op, 0, sizeof(op));
    op.host_addr = va;
    op.flags = GNTMAP_host_map | (readonly ? GNTMAP_readonly : 0);
    op.ref = ref;
    op.dom = dom;
    rc = HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &op, 1);
    if (rc != 0)
        return GNTST_general_error;
    *handle = op.handle;
    return op.status;
}

int16_t xg_gnttab_unmap(unsigned long va, grant_handle_t handle)
{
    struct gnttab_unmap_grant_ref op;
    long rc;

    memset(&op, 0, sizeof(op));
    op.host_addr = va;
    op.handle = handle;
    rc = HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &op, 1);
    return rc != 0 ? GNTST_general_error : op.status;
}
