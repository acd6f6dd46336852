/*
 * memtouch - dirty a working set at a given rate and verify every page before rewriting it,
 * the subject of the live-migration tests and benchmarks.
 *
 * cmdline: ws=<KiB of working set, 0..16384, default 1024>
 *          rate=<pages per second, 0 = as fast as possible, default 0>
 *          passes=<passes over the working set, 0 = forever, default 10>
 *          report=<print a line every N passes, default 1>
 *
 * Page p of the working set holds word i = xg_hash3(p, gen[p], i); each pass checks every word
 * of every page against the generation it was last written with, bumps the generation and
 * rewrites the page.  A page lost or corrupted by a save/restore or a migration shows up as
 *   "memtouch: FAIL page <p> word <i>: got <x> expected <y> (gen <g>)"  (then a crash).
 * A static table (filled once at start) is checked too, every pass.
 * While waiting for its rate it sleeps with SCHEDOP_poll on an unbound event channel of
 * its own (so event-channel state must survive a migration too); system time may jump
 * backwards on another host, which restarts the rate accounting.
 *
 * Lines: "memtouch: ws=<KiB> rate=<r> passes=<n> port=<p>", then "memtouch: pass <k> ok"
 * and finally "memtouch: PASS <n> passes".
 */
#include "xg.h"

#define WS_MAX_PAGES 4096u           /* 16 MiB */
#define WORDS (4096u / 4u)
#define TABLE_WORDS 4096u

static uint32_t ws[WS_MAX_PAGES][WORDS] __attribute__((aligned(4096)));
static uint32_t gen[WS_MAX_PAGES];
static uint32_t table[TABLE_WORDS];

static int check_page(uint32_t p)
{
    const uint32_t *w = ws[p];
    uint32_t g = gen[p];
    for (uint32_t i = 0; i < WORDS; i++) {
        uint32_t want = g ? xg_hash3(p, g, i) : 0;
        if (w[i] != want) {
            xg_printf("memtouch: FAIL page %u word %u: got %x expected %x (gen %u)\n",
                      p, i, w[i], want, g);
            return -1;
        }
    }
    return 0;
}

static void write_page(uint32_t p)
{
    uint32_t *w = ws[p];
    uint32_t g = ++gen[p];
    for (uint32_t i = 0; i < WORDS; i++)
        w[i] = xg_hash3(p, g, i);
}

static int check_table(void)
{
    for (uint32_t i = 0; i < TABLE_WORDS; i++)
        if (table[i] != xg_hash3(0xFFFFFFFFu, 7, i)) {
            xg_printf("memtouch: FAIL table word %u: got %x\n", i, table[i]);
            return -1;
        }
    return 0;
}

int main(void)
{
    unsigned long ws_kib = xg_cmdline_ulong("ws", 1024);
    unsigned long rate = xg_cmdline_ulong("rate", 0);
    unsigned long passes = xg_cmdline_ulong("passes", 10);
    unsigned long report = xg_cmdline_ulong("report", 1);
    uint32_t npages = (uint32_t)(ws_kib / 4);
    evtchn_alloc_unbound_t unbound = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };

    if (npages > WS_MAX_PAGES) {
        xg_printf("memtouch: FAIL ws=%lu KiB is more than %u\n", ws_kib, WS_MAX_PAGES * 4);
        return 1;
    }
    if (report == 0)
        report = 1;
    if (HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &unbound) != 0) {
        xg_printf("memtouch: FAIL alloc_unbound\n");
        return 1;
    }
    for (uint32_t i = 0; i < TABLE_WORDS; i++)
        table[i] = xg_hash3(0xFFFFFFFFu, 7, i);
    xg_printf("memtouch: ws=%lu rate=%lu passes=%lu port=%u\n", ws_kib, rate, passes,
              unbound.port);

    uint64_t t0 = xg_system_time_ns(), last = t0, done = 0;
    for (unsigned long pass = 1; passes == 0 || pass <= passes; pass++) {
        for (uint32_t p = 0; p < npages; p++) {
            if (check_page(p))
                return 1;
            write_page(p);
            done++;
            while (rate) {
                uint64_t now = xg_system_time_ns();
                if (now < last) {                /* another host's clock: start over */
                    t0 = now;
                    done = 0;
                }
                last = now;
                uint64_t due = t0 + done * 1000000000ull / rate;
                if (now >= due)
                    break;
                xg_evtchn_clear_pending(unbound.port);
                xg_poll_port(unbound.port, due - now);
            }
        }
        if (check_table())
            return 1;
        if (pass % report == 0)
            xg_printf("memtouch: pass %lu ok\n", pass);
    }
    for (uint32_t p = 0; p < npages; p++)
        if (check_page(p))
            return 1;
    xg_printf("memtouch: PASS %lu passes\n", passes);
    return 0;
}
