/*
 * blktest - blkfront against blkback: every operation, checked from inside.
 *
 * cmdline: devid=<n> (default 51712 = xvda), order=<ring page order>,
 *          persistent=0|1 (offer feature-persistent, default 1),
 *          ro=1 (the disk is read-only: writes and discards must fail),
 *          seed=<n> (pattern seed; durability tests read it back on the host).
 * Checks, one "blktest: <name>: ok" or "... FAIL (...)" line each:
 *   connect     handshake; sectors/info/features printed
 *   write-read  64 KiB (indirect) at sector 0, 4 KiB at 1000, 1 KiB inside a
 *               page (sectors 2048..2049), read back, compared
 *   flush       FLUSH_DISKCACHE succeeds; then "blktest: FLUSHED seed=<n>"
 *   barrier     WRITE_BARRIER write, read back
 *   discard     a written 64 KiB range discarded reads back as zeros
 *   past-end    a read at `sectors` fails (BLKIF_RSP_ERROR)
 *   reconnect   close (Closing, Closed), open again, data still there
 *   read-only   (ro=1) writes, barriers and discards fail, reads work
 *   second-disk (devid2=<n>) a second device (index 1) opened alongside the
 *               first: a pattern written to each reads back from each
 * Last line: "blktest: PASS (<n> checks)" or "blktest: FAIL (k of n failed)".
 */
#include "xg_blk.h"
#include "xg_events.h"
#include "xg_xenbus.h"

static char wbuf[XG_BLK_MAX_BYTES]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static char rbuf[XG_BLK_MAX_BYTES]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static struct xg_blk_mem blkmem __attribute__((section(".bss.page_aligned")));
static struct xg_blk_mem blkmem2 __attribute__((section(".bss.page_aligned")));
static struct xg_blk blk, blk2;
static int persistent;
static unsigned int checks, failed;
static unsigned long seed;

static void check(const char *name, int ok, const char *fmt, ...) XG_PRINTF(3, 4);
static void check(const char *name, int ok, const char *fmt, ...)
{
    char why[160];
    va_list ap;

    checks++;
    if (ok) {
        xg_printf("blktest: %s: ok\n", name);
        return;
    }
    failed++;
    va_start(ap, fmt);
    xg_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    xg_printf("blktest: %s: FAIL (%s)\n", name, why);
}

static void fill(char *buf, size_t len, unsigned long s)
{
    size_t i;

    for (i = 0; i < len; i++)
        buf[i] = (char)((s * 31 + i * 7 + (i >> 9)) & 0xff);
}

static int is_zero(const char *buf, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (buf[i])
            return 0;
    return 1;
}

static void check_rw(void)
{
    int w1, w2, w3, r1, r2, r3, c1, c2, c3;

    fill(wbuf, XG_BLK_MAX_BYTES, seed);
    w1 = xg_blk_write(&blk, 0, wbuf, XG_BLK_MAX_BYTES);
    memset(rbuf, 0, XG_BLK_MAX_BYTES);
    r1 = xg_blk_read(&blk, 0, rbuf, XG_BLK_MAX_BYTES);
    c1 = memcmp(wbuf, rbuf, XG_BLK_MAX_BYTES) == 0;
    fill(wbuf, 4096, seed + 1);
    w2 = xg_blk_write(&blk, 1000, wbuf, 4096);
    memset(rbuf, 0, 4096);
    r2 = xg_blk_read(&blk, 1000, rbuf, 4096);
    c2 = memcmp(wbuf, rbuf, 4096) == 0;
    fill(wbuf, 1024, seed + 2);
    w3 = xg_blk_write(&blk, 2048, wbuf, 1024);
    memset(rbuf, 0xee, 4096);
    r3 = xg_blk_read(&blk, 2048, rbuf, 1024);
    c3 = memcmp(wbuf, rbuf, 1024) == 0 && (unsigned char)rbuf[1024] == 0xee;
    check("write-read", !w1 && !w2 && !w3 && !r1 && !r2 && !r3 && c1 && c2 && c3,
          "rc %d %d %d / %d %d %d, same %d %d %d", w1, w2, w3, r1, r2, r3, c1, c2, c3);
}

static void check_flush_barrier_discard(void)
{
    int f, w, r, c, d;

    f = xg_blk_flush(&blk);
    check("flush", blk.feature_flush && f == 0, "feature %d rc %d", blk.feature_flush, f);
    if (f == 0)
        xg_printf("blktest: FLUSHED seed=%lu\n", seed);
    fill(wbuf, 8192, seed + 3);
    w = xg_blk_barrier_write(&blk, 4096, wbuf, 8192);
    r = xg_blk_read(&blk, 4096, rbuf, 8192);
    check("barrier", !w && !r && memcmp(wbuf, rbuf, 8192) == 0, "rc %d %d", w, r);
    fill(wbuf, XG_BLK_MAX_BYTES, seed + 4);
    w = xg_blk_write(&blk, 6144, wbuf, XG_BLK_MAX_BYTES);
    d = xg_blk_discard(&blk, 6144, XG_BLK_MAX_BYTES / 512);
    memset(rbuf, 0x55, XG_BLK_MAX_BYTES);
    r = xg_blk_read(&blk, 6144, rbuf, XG_BLK_MAX_BYTES);
    c = is_zero(rbuf, XG_BLK_MAX_BYTES);
    check("discard", blk.feature_discard && !w && !d && !r && c,
          "feature %d rc %d %d %d zeros %d", blk.feature_discard, w, d, r, c);
}

static void check_past_end(void)
{
    int r = xg_blk_read(&blk, blk.sectors, rbuf, 4096);
    int r2 = xg_blk_read(&blk, blk.sectors - 8, rbuf, 4096);

    check("past-end", r == -XEN_EIO && r2 == 0, "rc %d (last page %d)", r, r2);
}

static void check_reconnect(unsigned long devid, unsigned int order)
{
    int c = xg_blk_close(&blk);
    int o = c ? c : xg_blk_open(&blk, &blkmem, devid, 0, order, persistent);
    int r = o ? o : xg_blk_read(&blk, 0, rbuf, XG_BLK_MAX_BYTES);

    fill(wbuf, XG_BLK_MAX_BYTES, seed);
    check("reconnect", !c && !o && !r && memcmp(wbuf, rbuf, XG_BLK_MAX_BYTES) == 0,
          "close %d open %d read %d", c, o, r);
}

static void check_read_only(void)
{
    int w, b, d, r;

    fill(wbuf, 4096, seed);
    w = xg_blk_write(&blk, 0, wbuf, 4096);
    b = xg_blk_barrier_write(&blk, 0, wbuf, 4096);
    d = xg_blk_discard(&blk, 0, 8);
    r = xg_blk_read(&blk, 0, rbuf, 4096);
    check("read-only", (blk.info & VDISK_READONLY) && w == -XEN_EIO && b == -XEN_EIO &&
          d == -XEN_EIO && r == 0, "info %#lx write %d barrier %d discard %d read %d",
          blk.info, w, b, d, r);
    xg_printf("blktest: first bytes %02x %02x %02x %02x\n", (unsigned char)rbuf[0],
              (unsigned char)rbuf[1], (unsigned char)rbuf[2], (unsigned char)rbuf[3]);
}

static void check_second_disk(unsigned long devid2)
{
    int o = xg_blk_open(&blk2, &blkmem2, devid2, 1, 0, persistent);
    int w1, w2, r1, r2, c1, c2, c;

    if (o) {
        check("second-disk", 0, "open devid %lu: %d", devid2, o);
        return;
    }
    fill(wbuf, 8192, seed + 10);
    w1 = xg_blk_write(&blk, 3000, wbuf, 8192);
    fill(wbuf, 8192, seed + 20);
    w2 = xg_blk_write(&blk2, 3000, wbuf, 8192);
    r2 = xg_blk_read(&blk2, 3000, rbuf, 8192);
    c2 = memcmp(wbuf, rbuf, 8192) == 0;
    fill(wbuf, 8192, seed + 10);
    r1 = xg_blk_read(&blk, 3000, rbuf, 8192);
    c1 = memcmp(wbuf, rbuf, 8192) == 0;
    c = xg_blk_close(&blk2);
    check("second-disk", !w1 && !w2 && !r1 && !r2 && c1 && c2 && !c,
          "rc %d %d / %d %d, same %d %d, close %d", w1, w2, r1, r2, c1, c2, c);
}

int main(void)
{
    unsigned long devid = xg_cmdline_ulong("devid", 51712);
    unsigned long devid2 = xg_cmdline_ulong("devid2", 0);
    unsigned int order = (unsigned int)xg_cmdline_ulong("order", 0);
    int ro = (int)xg_cmdline_ulong("ro", 0);
    long rc;

    seed = xg_cmdline_ulong("seed", 1);
    persistent = (int)xg_cmdline_ulong("persistent", 1);
    rc = xg_blk_init();
    if (rc == 0)
        rc = xg_blk_open(&blk, &blkmem, devid, 0, order, persistent);
    check("connect", rc == 0, "rc %ld", rc);
    if (rc) {
        xg_printf("blktest: FAIL (cannot connect)\n");
        return 1;
    }
    xg_printf("blktest: sectors=%lu sector-size=%lu info=%#lx indirect=%lu order=%u "
              "persistent=%d\n", (unsigned long)blk.sectors, blk.sector_size, blk.info,
              blk.max_indirect, blk.order, blk.persistent);
    if (ro) {
        check_read_only();
    } else {
        check_rw();
        check_flush_barrier_discard();
        check_past_end();
        if (devid2)
            check_second_disk(devid2);
        check_reconnect(devid, order);
    }
    xg_blk_close(&blk);
    if (failed)
        xg_printf("blktest: FAIL (%u of %u failed)\n", failed, checks);
    else
        xg_printf("blktest: PASS (%u checks)\n", checks);
    return failed != 0;
}
