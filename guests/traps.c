/*
 * traps - exception delivery as a Xen PV kernel sees it.
 *
 * Installs a trap table, provokes #DE, #UD, int3, #PF, a software int with
 * no trap-table entry, cli/hlt, Xen's forced-emulation CPUID, then drops
 * to user mode (HYPERVISOR_iret) for a syscall, a user #PF and a user cli,
 * and comes back with `int $0x80` eax=0.  Every trap is logged by the hook
 * and checked against the labels in traps_asm.S.
 *
 * Expected last console line: "traps: PASS (N checks)"; otherwise
 * "traps: FAIL (k of N failed)".  A trap the hook does not expect prints
 * the frame and crashes the domain.
 */
#include "xg.h"

#define UNMAPPED_VA (XG_VIRT_BASE + 0x3000000UL)

struct fixup {
    unsigned long fault_ip, resume_ip;
};
extern const struct fixup __fixup_start[], __fixup_end[];
extern char __user_text_start[], __user_text_end[];

extern char traps_div0_insn[], traps_ud2_insn[], traps_ud2_resume[];
extern char traps_int3_after[], traps_pf_insn[], traps_int81_insn[];
extern char traps_cli_insn[], traps_hlt_insn[], traps_cpuid_insn[];
extern char traps_user_entry[], traps_user_int80_after[];
extern char traps_user_pf_insn[], traps_user_cli_insn[];

void traps_do_div0(void);
void traps_do_ud2(void);
void traps_do_int3(void);
unsigned long traps_do_read(unsigned long va);
void traps_do_int81(void);
void traps_do_cli(void);
void traps_do_hlt(void);
void traps_do_xen_cpuid(uint32_t leaf, uint32_t out[4]);

struct trap_event {
    unsigned long vector, error_code, ip, cs, ax, cr2;
};

#define MAX_EVENTS 8
static struct trap_event events[MAX_EVENTS];
static unsigned int nevents;
static unsigned int nchecks, nfailed;

static char user_stack[XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static char kernel_trap_stack[2 * XG_PAGE_SIZE]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));

static void hook(struct xg_regs *r)
{
    const struct fixup *f;

    if (nevents < MAX_EVENTS) {
        struct trap_event *e = &events[nevents];
        e->vector = r->vector;
        e->error_code = r->error_code;
        e->ip = r->ip;
        e->cs = r->cs;
        e->ax = r->ax;
        e->cr2 = r->vector == 14 ? xg_shared_info->vcpu_info[0].arch.cr2 : 0;
    }
    nevents++;

    if (r->vector == 0x80) {
        if (r->ax == 0 && xg_regs_from_user(r))
            xg_return_to_kernel(1);     /* "exit": resume the kernel's test code */
        return;                         /* a trap: ip is already past the int */
    }
    if (r->vector == 3)
        return;
    for (f = __fixup_start; f < __fixup_end; f++) {
        if (f->fault_ip == r->ip) {
            r->ip = f->resume_ip;
            return;
        }
    }
    xg_trap_unhandled(r);
}

static void reset_events(void)
{
    nevents = 0;
    memset(events, 0, sizeof(events));
}

static void check(const char *name, int ok, const char *fmt, ...) XG_PRINTF(3, 4);

static void check(const char *name, int ok, const char *fmt, ...)
{
    char detail[200];
    va_list ap;

    nchecks++;
    if (ok) {
        xg_printf("traps: %s: ok\n", name);
        return;
    }
    nfailed++;
    va_start(ap, fmt);
    xg_vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    xg_printf("traps: %s: FAIL (%s)\n", name, detail);
}

/* Exactly one trap with this vector, error code and ip was logged. */
static void check_one(const char *name, unsigned long vector,
                      unsigned long error_code, const void *ip)
{
    const struct trap_event *e = &events[0];

    if (nevents != 1) {
        check(name, 0, "expected 1 trap, got %u (first vector %lu ip %#lx)",
              nevents, e->vector, e->ip);
        return;
    }
    check(name, e->vector == vector && e->error_code == error_code &&
                e->ip == (unsigned long)ip,
          "expected vector %lu error %#lx ip %p, got vector %lu error %#lx ip %#lx",
          vector, error_code, ip, e->vector, e->error_code, e->ip);
}

static void kernel_tests(void)
{
    uint32_t id[4];

    reset_events();
    traps_do_div0();
    check_one("#DE divide by zero", 0, 0, traps_div0_insn);

    reset_events();
    traps_do_ud2();
    check_one("#UD ud2", 6, 0, traps_ud2_insn);
    check("#UD skipped 2 bytes", traps_ud2_resume - traps_ud2_insn == 2,
          "ud2 is %ld bytes", (long)(traps_ud2_resume - traps_ud2_insn));

    reset_events();
    traps_do_int3();
    check_one("int3 (ip after the int3)", 3, 0, traps_int3_after);

    reset_events();
    traps_do_read(UNMAPPED_VA);
    check_one("#PF kernel read of unmapped VA", 14, 0, traps_pf_insn);
    check("#PF cr2 in vcpu_info", nevents == 1 && events[0].cr2 == UNMAPPED_VA,
          "expected cr2 %#lx, got %#lx", UNMAPPED_VA, events[0].cr2);

    reset_events();
    traps_do_int81();
    check_one("int $0x81 without entry -> #GP", 13, (0x81 << 3) | 2, traps_int81_insn);

    reset_events();
    traps_do_cli();
    check_one("cli -> #GP(0)", 13, 0, traps_cli_insn);

    reset_events();
    traps_do_hlt();
    check_one("hlt -> #GP(0)", 13, 0, traps_hlt_insn);

    reset_events();
    traps_do_xen_cpuid(0x40000000, id);
    {
        char sig[13];
        memcpy(sig + 0, &id[1], 4);
        memcpy(sig + 4, &id[2], 4);
        memcpy(sig + 8, &id[3], 4);
        sig[12] = '\0';
        check("forced-emulation cpuid 0x40000000",
              nevents == 0 && strcmp(sig, "XenVMMXenVMM") == 0,
              "signature \"%s\", max leaf %#x, %u traps (first vector %lu)",
              sig, id[0], nevents, events[0].vector);
    }
}

static int map_user(void *va, unsigned long flags)
{
    int rc = xg_map_mfn(va, xg_virt_to_mfn(va),
                        flags | XG_PAGE_PRESENT | XG_PAGE_USER | XG_PAGE_ACCESSED);
    if (rc)
        xg_printf("traps: update_va_mapping(%p, USER) failed: %d\n", va, rc);
    return rc;
}

static int user_setup(void)
{
    char *p;
    long rc;

    rc = HYPERVISOR_stack_switch(XG_KERNEL_SS,
                                 (unsigned long)kernel_trap_stack + sizeof(kernel_trap_stack));
    if (rc) {
        xg_printf("traps: stack_switch failed: %ld\n", rc);
        return -1;
    }
    for (p = __user_text_start; p < __user_text_end; p += XG_PAGE_SIZE)
        if (map_user(p, 0))
            return -1;
    if (map_user(user_stack, XG_PAGE_RW | XG_PAGE_DIRTY))
        return -1;
#ifdef __x86_64__
    {
        /* Xen refuses to enter user mode without a user page table. */
        struct mmuext_op op;
        memset(&op, 0, sizeof(op));
        op.cmd = MMUEXT_NEW_USER_BASEPTR;
        op.arg1.mfn = xg_virt_to_mfn((void *)xg_start_info->pt_base);
        rc = HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
        if (rc) {
            xg_printf("traps: MMUEXT_NEW_USER_BASEPTR failed: %ld\n", rc);
            return -1;
        }
    }
#endif
    return 0;
}

static void user_tests(void)
{
    const struct trap_event *e = events;
    long ret;

    if (user_setup() != 0) {
        check("user-mode setup", 0, "see above");
        return;
    }
    check("user-mode setup", 1, "%s", "");

    reset_events();
    ret = xg_enter_user((unsigned long)traps_user_entry,
                        (unsigned long)user_stack + sizeof(user_stack));

    check("int $0x80 from ring 3",
          nevents >= 1 && e[0].vector == 0x80 && e[0].ax == 1 && (e[0].cs & 3) == 3 &&
          e[0].ip == (unsigned long)traps_user_int80_after,
          "%u traps; first vector %#lx eax %lu cs %#lx ip %#lx",
          nevents, e[0].vector, e[0].ax, e[0].cs, e[0].ip);
    check("user #PF (error code U bit)",
          nevents >= 2 && e[1].vector == 14 && e[1].error_code == 4 &&
          e[1].cr2 == UNMAPPED_VA && (e[1].cs & 3) == 3 &&
          e[1].ip == (unsigned long)traps_user_pf_insn,
          "second trap: vector %lu error %#lx cr2 %#lx cs %#lx ip %#lx",
          e[1].vector, e[1].error_code, e[1].cr2, e[1].cs, e[1].ip);
    check("user cli -> #GP(0)",
          nevents >= 3 && e[2].vector == 13 && e[2].error_code == 0 &&
          (e[2].cs & 3) == 3 && e[2].ip == (unsigned long)traps_user_cli_insn,
          "third trap: vector %lu error %#lx cs %#lx ip %#lx",
          e[2].vector, e[2].error_code, e[2].cs, e[2].ip);
    check("int $0x80 exit back to kernel",
          ret == 1 && nevents == 4 && e[3].vector == 0x80 && e[3].ax == 0 &&
          (e[3].cs & 3) == 3,
          "xg_enter_user returned %ld after %u traps", ret, nevents);
}

int main(void)
{
    long rc;

    xg_printf("traps: start (%s)\n", XG_ARCH_NAME);
    rc = xg_traps_init(hook);
    if (rc) {
        xg_printf("traps: FAIL (set_trap_table returned %ld)\n", rc);
        return 1;
    }
    kernel_tests();
    user_tests();

    if (nfailed)
        xg_printf("traps: FAIL (%u of %u failed)\n", nfailed, nchecks);
    else
        xg_printf("traps: PASS (%u checks)\n", nchecks);
    return 0;
}
