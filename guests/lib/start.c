/*
 * start.c - from head.S to main(): remember start_info, map shared_info,
 * set up the console, run the guest, shut down.
 *
 * start_info->shared_info is a machine address, so the page is mapped by
 * rewriting the PTE of a page we own in .bss (HYPERVISOR_update_va_mapping);
 * the frame that page used to map is simply left unreferenced by that VA.
 */
#include "xg.h"

start_info_t *xg_start_info;
shared_info_t *xg_shared_info;

static char xg_shared_info_page[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));

unsigned long xg_pfn_to_mfn(unsigned long pfn)
{
    const unsigned long *p2m = (const unsigned long *)xg_start_info->mfn_list;
    return p2m[pfn];
}

unsigned long xg_mfn_to_pfn(unsigned long mfn)
{
    return machine_to_phys_mapping[mfn];
}

void *xg_mfn_to_virt(unsigned long mfn)
{
    return xg_pfn_to_virt(xg_mfn_to_pfn(mfn));
}

unsigned long xg_virt_to_mfn(const void *va)
{
    return xg_pfn_to_mfn(xg_virt_to_pfn(va));
}

int xg_map_mfn(void *va, unsigned long mfn, unsigned long flags)
{
    xg_pte_t pte = ((xg_pte_t)mfn << XG_PAGE_SHIFT) | flags;
    return HYPERVISOR_update_va_mapping((unsigned long)va, pte, UVMF_INVLPG);
}

void xg_c_start(start_info_t *si);

void xg_c_start(start_info_t *si)
{
    int rc;

    xg_start_info = si;
    /* Until shared_info is mapped, the console can only use console_io. */
    rc = HYPERVISOR_update_va_mapping(
        (unsigned long)xg_shared_info_page,
        (xg_pte_t)si->shared_info | XG_PAGE_PRESENT | XG_PAGE_RW | XG_PAGE_ACCESSED,
        UVMF_INVLPG);
    if (rc != 0) {
        char msg[96];
        xg_snprintf(msg, sizeof(msg),
                    "xg: mapping shared_info (maddr %#lx) failed: %d\n",
                    (unsigned long)si->shared_info, rc);
        xg_console_io_write(msg);
        xg_crash();
    }
    xg_shared_info = (shared_info_t *)xg_shared_info_page;
    /* Xen starts us masked; with no upcall handler registered, keep it so. */
    xg_shared_info->vcpu_info[0].evtchn_upcall_mask = 1;
    xg_cons_init();

    rc = main();
    if (rc != 0)
        xg_crash();
    xg_poweroff();
}
