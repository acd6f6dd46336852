/*
 * xg_mm.h - page-table and grant-table helpers of the xenpy-test guest library.
 *
 * Page tables: a PV kernel's tables are mapped read-only; it changes them
 * either with hypercalls (mmu_update, update_va_mapping) or by plain stores
 * that Xen emulates (writable page tables, VMASST_TYPE_writable_pagetables).
 * Grant tables: v1, one shared frame mapped at a .bss page.
 */
#ifndef XG_MM_H
#define XG_MM_H

#include "xg.h"
#include <xen/memory.h>
#include <xen/grant_table.h>

static inline long HYPERVISOR_mmu_update(mmu_update_t *req, unsigned int count,
                                         unsigned int *done, domid_t dom)
{ return _hypercall4(long, mmu_update, req, count, done, dom); }
static inline long HYPERVISOR_grant_table_op(unsigned int cmd, void *uop, unsigned int count)
{ return _hypercall3(long, grant_table_op, cmd, uop, count); }
static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{ return _hypercall2(long, memory_op, cmd, arg); }
static inline long HYPERVISOR_vm_assist(unsigned int cmd, unsigned int type)
{ return _hypercall2(long, vm_assist, cmd, type); }

/* ---- page tables (pt.c) ---- */
/* Pointer to the (read-only mapped) L1 entry that maps va, or NULL. */
volatile xg_pte_t *xg_pte_ptr(unsigned long va);
/* Turn on writable page tables (vm_assist). */
long xg_pt_enable_writable(void);
/* Write the L1 entry of va with a plain store: Xen's ptwr emulation applies it. */
void xg_pte_store(unsigned long va, xg_pte_t pte);
/* The same update through HYPERVISOR_mmu_update (machine address of the entry). */
long xg_pte_mmu_update(unsigned long va, xg_pte_t pte);
/* Flush the TLB entry of va (MMUEXT_INVLPG_LOCAL). */
long xg_invlpg(unsigned long va);
/* Pin / unpin a page-table frame (MMUEXT_PIN_Ln_TABLE, level 1..4). */
long xg_pin_table(unsigned int level, unsigned long mfn);
long xg_unpin_table(unsigned long mfn);

/* ---- grant tables (gnttab.c) ---- */
/* v1 entries: XG_GNTTAB_FRAMES frames of 512 (refs 0..7 are Xen's reserved ones). */
#define XG_GNTTAB_FRAMES  4
#define XG_GNTTAB_ENTRIES (XG_GNTTAB_FRAMES * (XG_PAGE_SIZE / sizeof(grant_entry_v1_t)))
/* setup_table for XG_GNTTAB_FRAMES frames and map them; 0 or a negative errno. */
long xg_gnttab_init(void);
/* Grant domid access to mfn through ref (readonly: GTF_readonly). */
void xg_gnttab_grant(grant_ref_t ref, domid_t domid, unsigned long mfn, int readonly);
/* Revoke ref: 0, or -1 while the grantee still maps it (GTF_reading/GTF_writing). */
int xg_gnttab_end(grant_ref_t ref);
/* The flags Xen and we keep in entry ref. */
uint16_t xg_gnttab_flags(grant_ref_t ref);
/* Map dom's grant ref at va (page-aligned); GNTST_* status, handle on success. */
int16_t xg_gnttab_map(domid_t dom, grant_ref_t ref, unsigned long va, int readonly,
                      grant_handle_t *handle);
int16_t xg_gnttab_unmap(unsigned long va, grant_handle_t handle);

#endif
