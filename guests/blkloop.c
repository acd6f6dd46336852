/*
 * blkloop - keep a disk busy and check every block it reads back: the subject of the
 * save/restore and live-migration tests with a disk.
 *
 * cmdline: devid=<n> (default xvda), rounds=<n> (0 = forever, default 200),
 *          qd=<writes in flight per round, 1..8, default 4>, report=<every n rounds>,
 *          persistent=0|1 (default 1),
 *          hotplug=1: boot without a disk, print "blkloop: waiting for a disk", and
 *          use the first vbd that appears under device/vbd (a watch, as a xenbus
 *          frontend driver probes hot-plugged devices).
 * The disk holds SLOTS slots of 64 KiB at sector 128*s.  A slot is self-describing:
 * word 0 = MAGIC, word 1 = slot, word 2 = generation, the rest xg_hash3(slot, gen, i),
 * so the host can check the image afterwards without knowing the order of writes.  Round r
 * writes qd slots (async, all in flight together) with generation r, then reads back
 * one of them and one slot chosen at random and checks each against what this guest
 * last wrote there (an unwritten slot reads as zeros).  Every 8th round flushes.
 * A lost, torn or stale block shows up as
 *   "blkloop: FAIL slot <s> word <i>: got <x> expected <y> (gen <g>)".
 * Lines: "blkloop: connected sectors=<n>", "blkloop: round <r> ok" every `report`
 * rounds, and at the end (after a flush) "blkloop: PASS <rounds> rounds".
 */
#include "xg_blk.h"
#include "xg_events.h"
#include "xg_xenbus.h"

#define SLOTS 32u
#define QD_MAX 8u
#define WORDS (XG_BLK_MAX_BYTES / 4u)
#define MAGIC 0xB10C1009u

static uint32_t wbuf[QD_MAX][WORDS]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static uint32_t rbuf[WORDS] __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static struct xg_blk_mem blkmem __attribute__((section(".bss.page_aligned")));
static struct xg_blk blk;
static uint32_t gen[SLOTS];
static uint64_t rng = 0x9E3779B97F4A7C15ull;

/* The first device that appears under device/vbd (hot-plug); 0 on a XenStore error. */
static unsigned long wait_for_disk(void)
{
    char names[256], wpath[128], token[16];
    unsigned long devid = 0;

    if (xg_xs_watch("device/vbd", "hotplug") < 0)
        return 0;
    xg_printf("blkloop: waiting for a disk\n");
    for (;;) {
        int n = xg_xs_directory(0, "device/vbd", names, sizeof(names));
        if (n > 0) {
            for (const char *p = names; *p; p++)
                devid = devid * 10 + (unsigned long)(*p - '0');
            break;
        }
        if (xg_xs_read_watch(wpath, sizeof(wpath), token, sizeof(token), 0) < 0)
            break;                        /* waits as long as it takes, as xenbus does */
    }
    xg_xs_unwatch("device/vbd", "hotplug");
    return devid;
}

static uint32_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void fill(uint32_t *w, uint32_t s, uint32_t g)
{
    w[0] = MAGIC;
    w[1] = s;
    w[2] = g;
    for (uint32_t i = 3; i < WORDS; i++)
        w[i] = xg_hash3(s, g, i);
}

static int check_slot(uint32_t s)
{
    uint32_t g = gen[s];
    int rc = xg_blk_read(&blk, (uint64_t)s * (XG_BLK_MAX_BYTES / 512), rbuf, XG_BLK_MAX_BYTES);

    if (rc) {
        xg_printf("blkloop: FAIL slot %u: read rc %d\n", s, rc);
        return -1;
    }
    for (uint32_t i = 0; i < WORDS; i++) {
        uint32_t want = !g ? 0 : i == 0 ? MAGIC : i == 1 ? s : i == 2 ? g : xg_hash3(s, g, i);
        if (rbuf[i] != want) {
            xg_printf("blkloop: FAIL slot %u word %u: got %x expected %x (gen %u)\n",
                      s, i, rbuf[i], want, g);
            return -1;
        }
    }
    return 0;
}

int main(void)
{
    unsigned long devid = xg_cmdline_ulong("devid", 51712);
    unsigned long rounds = xg_cmdline_ulong("rounds", 200);
    unsigned long report = xg_cmdline_ulong("report", 10);
    unsigned int qd = (unsigned int)xg_cmdline_ulong("qd", 4);
    int persistent = (int)xg_cmdline_ulong("persistent", 1);
    long rc;

    if (qd < 1 || qd > QD_MAX || report == 0) {
        xg_printf("blkloop: FAIL bad cmdline (qd 1..%u, report > 0)\n", QD_MAX);
        return 1;
    }
    rc = xg_blk_init();
    if (rc == 0 && xg_cmdline_ulong("hotplug", 0)) {
        devid = wait_for_disk();
        if (!devid) {
            xg_printf("blkloop: FAIL no disk appeared\n");
            return 1;
        }
        xg_printf("blkloop: hot-plugged devid=%lu\n", devid);
    }
    if (rc == 0)
        rc = xg_blk_open(&blk, &blkmem, devid, 0, 0, persistent);
    if (rc) {
        xg_printf("blkloop: FAIL cannot connect (rc %ld)\n", rc);
        return 1;
    }
    if (blk.sectors < (uint64_t)SLOTS * (XG_BLK_MAX_BYTES / 512)) {
        xg_printf("blkloop: FAIL disk of %lu sectors is smaller than %u slots\n",
                  (unsigned long)blk.sectors, SLOTS);
        return 1;
    }
    xg_printf("blkloop: connected sectors=%lu persistent=%d\n", (unsigned long)blk.sectors,
              blk.persistent);
    for (unsigned long r = 1; rounds == 0 || r <= rounds; r++) {
        uint32_t first = (uint32_t)((r * qd) % SLOTS);
        for (uint32_t k = 0; k < qd; k++) {
            uint32_t s = (first + k) % SLOTS;
            fill(wbuf[k], s, (uint32_t)r);
            if (xg_blk_submit(&blk, BLKIF_OP_WRITE, (uint64_t)s * (XG_BLK_MAX_BYTES / 512),
                              wbuf[k], XG_BLK_MAX_BYTES) < 0) {
                xg_printf("blkloop: FAIL submit round %lu\n", r);
                return 1;
            }
        }
        rc = xg_blk_wait_all(&blk);
        if (rc) {
            xg_printf("blkloop: FAIL %ld writes of round %lu failed\n", rc, r);
            return 1;
        }
        for (uint32_t k = 0; k < qd; k++)
            gen[(first + k) % SLOTS] = (uint32_t)r;
        if (check_slot(first) || check_slot(next_random() % SLOTS))
            return 1;
        if (r % 8 == 0 && xg_blk_flush(&blk)) {
            xg_printf("blkloop: FAIL flush round %lu\n", r);
            return 1;
        }
        if (r % report == 0)
            xg_printf("blkloop: round %lu ok\n", r);
    }
    for (uint32_t s = 0; s < SLOTS; s++)
        if (check_slot(s))
            return 1;
    if (xg_blk_flush(&blk)) {
        xg_printf("blkloop: FAIL final flush\n");
        return 1;
    }
    xg_printf("blkloop: PASS %lu rounds\n", rounds);
    return 0;
}
