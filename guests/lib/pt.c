/*
 * pt.c - find and change our own page-table entries.
 *
 * Every table of the initial mapping lies inside that mapping, so a table's
 * virtual address is pfn_to_virt(M2P[mfn]).  The walk starts at
 * start_info->pt_base (the L3 of a PAE guest, the L4 of a 64-bit one).
 */
#include "xg_mm.h"

#define PTE_ADDR_MASK 0x000ffffffffff000ULL

static void *table_of(xg_pte_t entry)
{
    if (!(entry & XG_PAGE_PRESENT))
        return NULL;
    return xg_mfn_to_virt((unsigned long)((entry & PTE_ADDR_MASK) >> XG_PAGE_SHIFT));
}

volatile xg_pte_t *xg_pte_ptr(unsigned long va)
{
    xg_pte_t *t = (xg_pte_t *)xg_start_info->pt_base;
#if defined(__x86_64__)
    static const unsigned int shifts[] = { 39, 30, 21 };
#else
    static const unsigned int shifts[] = { 30, 21 };
#endif
    unsigned int i;

    for (i = 0; i < XG_ARRAY_SIZE(shifts); i++) {
        t = table_of(t[(va >> shifts[i]) & 511]);
        if (!t)
            return NULL;
    }
    return &t[(va >> XG_PAGE_SHIFT) & 511];
}

long xg_pt_enable_writable(void)
{
    return HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_writable_pagetables);
}

void xg_pte_store(unsigned long va, xg_pte_t pte)
{
    volatile xg_pte_t *p = xg_pte_ptr(va);

    if (!p)
        xg_panic("xg_pte_store: no L1 table maps %#lx\n", va);
    *p = pte;                          /* faults; Xen validates and applies it */
    xg_invlpg(va);
}

long xg_pte_mmu_update(unsigned long va, xg_pte_t pte)
{
    volatile xg_pte_t *p = xg_pte_ptr(va);
    mmu_update_t req;
    unsigned int done = 0;

    if (!p)
        return -22;
    req.ptr = ((uint64_t)xg_virt_to_mfn((const void *)p) << XG_PAGE_SHIFT)
              | ((unsigned long)p & (XG_PAGE_SIZE - 1)) | MMU_NORMAL_PT_UPDATE;
    req.val = pte;
    return HYPERVISOR_mmu_update(&req, 1, &done, DOMID_SELF);
}

long xg_invlpg(unsigned long va)
{
    struct mmuext_op op;

    op.cmd = MMUEXT_INVLPG_LOCAL;
    op.arg1.linear_addr = va;
    return HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}

long xg_pin_table(unsigned int level, unsigned long mfn)
{
    struct mmuext_op op;

    if (level < 1 || level > 4)
        return -22;
    op.cmd = MMUEXT_PIN_L1_TABLE + level - 1;
    op.arg1.mfn = mfn;
    return HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}

long xg_unpin_table(unsigned long mfn)
{
    struct mmuext_op op;

    op.cmd = MMUEXT_UNPIN_TABLE;
    op.arg1.mfn = mfn;
    return HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}
