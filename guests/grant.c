/*
 * grant - two domains share a page on purpose, through a grant.
 *
 * One kernel, two roles, told apart on the command line (no XenStore):
 *   role=0 peer=<B's domid> ref=<gref>   A, the granter
 *   role=1 peer=<A's domid> ref=<gref>   B, the mapper
 *
 * A first checks the page-table helpers (a PTE changed by a plain store that
 * Xen's writable-page-table emulation applies, and by mmu_update), then
 * grants B its page `shared`.  B maps it, writes a message; A sees the bytes,
 * finds it cannot revoke the grant while B maps it, and acknowledges.  B
 * unmaps; A revokes; B's next access to the old address faults into B.
 *
 * Expected last lines: "grant_a: PASS" and "grant_b: PASS".
 */
#include "xg_mm.h"

#define MSG "hello from the other domain"
#define ACK_OFF 2048
#define MAX_WAIT 2000000UL

static char shared[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static char window[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static char other[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static char trap_stack[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));

static volatile int expect_fault;

static void yield(void)
{
    HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
}

static int wait_for(volatile const char *p, const char *text)
{
    unsigned long n;

    for (n = 0; n < MAX_WAIT; n++) {
        if (memcmp((const void *)p, text, strlen(text)) == 0)
            return 0;
        yield();
    }
    return -1;
}

static void hook(struct xg_regs *r)
{
    unsigned long cr2 = xg_shared_info->vcpu_info[0].arch.cr2;

    if (r->vector == 14 && expect_fault && cr2 == (unsigned long)window) {
        xg_printf("grant_b: #PF at %#lx after unmap (error code %#lx)\n", cr2, r->error_code);
        xg_printf("grant_b: PASS\n");
        xg_poweroff();
    }
    xg_trap_unhandled(r);
}

/* The page-table helpers: remap `window` to the frame of `other`, two ways. */
static int check_pt(void)
{
    volatile xg_pte_t *p = xg_pte_ptr((unsigned long)window);
    xg_pte_t old, pte;
    long rc;

    if (!p) {
        xg_printf("pt: FAIL (no PTE for window)\n");
        return -1;
    }
    old = *p;
    memcpy(other, "other page", 11);
    pte = ((xg_pte_t)xg_virt_to_mfn(other) << XG_PAGE_SHIFT)
          | XG_PAGE_PRESENT | XG_PAGE_RW | XG_PAGE_ACCESSED | XG_PAGE_DIRTY;
    xg_pte_store((unsigned long)window, pte);
    if (memcmp(window, "other page", 11) != 0) {
        xg_printf("pt: FAIL (a ptwr store did not remap the window)\n");
        return -1;
    }
    xg_printf("pt: ptwr store ok\n");
    rc = xg_pte_mmu_update((unsigned long)window, old);
    xg_invlpg((unsigned long)window);
    if (rc != 0 || *p != old || window[0] != 0) {
        xg_printf("pt: FAIL (mmu_update returned %ld)\n", rc);
        return -1;
    }
    xg_printf("pt: mmu_update ok\n");
    return 0;
}

static int granter(domid_t peer, grant_ref_t ref)
{
    long rc;
    unsigned long n;

    rc = xg_pt_enable_writable();
    if (rc != 0 || check_pt() != 0)
        return 1;
    rc = xg_gnttab_init();
    if (rc != 0) {
        xg_printf("grant_a: FAIL (grant table setup: %ld)\n", rc);
        return 1;
    }
    xg_gnttab_grant(ref, peer, xg_virt_to_mfn(shared), 0);
    xg_printf("grant_a: granted ref=%u of mfn %#lx to d%u\n", ref, xg_virt_to_mfn(shared), peer);
    if (wait_for(shared, MSG) != 0) {
        xg_printf("grant_a: FAIL (no message from d%u)\n", peer);
        return 1;
    }
    xg_printf("grant_a: saw '%s' (flags %#x)\n", shared, xg_gnttab_flags(ref));
    if (xg_gnttab_end(ref) == 0) {
        xg_printf("grant_a: FAIL (revoked a mapped grant)\n");
        return 1;
    }
    xg_printf("grant_a: revoke refused while mapped\n");
    memcpy(shared + ACK_OFF, "ack", 4);
    for (n = 0; n < MAX_WAIT && xg_gnttab_end(ref) != 0; n++)
        yield();
    if (n == MAX_WAIT) {
        xg_printf("grant_a: FAIL (d%u never unmapped)\n", peer);
        return 1;
    }
    xg_printf("grant_a: revoked after unmap\n");
    xg_printf("grant_a: PASS\n");
    return 0;
}

static int mapper(domid_t peer, grant_ref_t ref)
{
    grant_handle_t handle = 0;
    int16_t st;
    unsigned long n;

    xg_traps_init(hook);
    HYPERVISOR_stack_switch(XG_KERNEL_SS, (unsigned long)trap_stack + sizeof(trap_stack));
    for (n = 0; n < MAX_WAIT; n++) {
        st = xg_gnttab_map(peer, ref, (unsigned long)window, 0, &handle);
        if (st == GNTST_okay)
            break;
        yield();                        /* A may not have granted yet */
    }
    if (st != GNTST_okay) {
        xg_printf("grant_b: FAIL (map: status %d)\n", st);
        return 1;
    }
    xg_printf("grant_b: mapped d%u ref %u at %p (handle %u)\n", peer, ref, (void *)window, handle);
    memcpy(window, MSG, sizeof(MSG));
    xg_printf("grant_b: wrote\n");
    if (wait_for(window + ACK_OFF, "ack") != 0) {
        xg_printf("grant_b: FAIL (no ack)\n");
        return 1;
    }
    st = xg_gnttab_unmap((unsigned long)window, handle);
    if (st != GNTST_okay) {
        xg_printf("grant_b: FAIL (unmap: status %d)\n", st);
        return 1;
    }
    st = xg_gnttab_unmap((unsigned long)window, handle);
    xg_printf("grant_b: unmapped; again: status %d\n", st);
    expect_fault = 1;
    xg_barrier();
    (void)*(volatile char *)window;     /* faults: the hook finishes the test */
    xg_printf("grant_b: FAIL (window still mapped after unmap)\n");
    return 1;
}

int main(void)
{
    unsigned long role = xg_cmdline_ulong("role", 99);
    domid_t peer = (domid_t)xg_cmdline_ulong("peer", 0);
    grant_ref_t ref = (grant_ref_t)xg_cmdline_ulong("ref", 10);

    if (role == 0)
        return granter(peer, ref);
    if (role == 1)
        return mapper(peer, ref);
    xg_printf("grant: FAIL (cmdline needs role=0|1 peer=<domid> [ref=<n>])\n");
    return 1;
}
