/*
 * blkbench - throughput through blkfront/blkback.
 *
 * cmdline: devid=<n> (default xvda), mib=<MiB per sequential pass> (default 8),
 *          persistent=0|1 (default 1: the persistent pool is the buffer, no copies),
 *          ops=<random 4 KiB ops per pass> (default 1024), qd=<in flight> (default 8).
 * Passes: sequential 64 KiB writes, flush, sequential 64 KiB reads, random
 * 4 KiB writes, flush, random 4 KiB reads, each timed with Xen system time.
 * The data are not touched by the guest: this measures the I/O path.
 * Before and after each pass: "blkbench: begin <pass>" / "blkbench: end <pass>".
 * Last line: "blkbench: RESULT seq_write_ns=<n> seq_read_ns=<n> rand_write_ns=<n>
 *             rand_read_ns=<n> seq_bytes=<n> rand_bytes=<n>".
 */
#include "xg_blk.h"
#include "xg_events.h"
#include "xg_xenbus.h"

#define QD_MAX 16

static char bufs[QD_MAX][XG_BLK_MAX_BYTES]
    __attribute__((aligned(XG_PAGE_SIZE), section(".bss.page_aligned")));
static struct xg_blk_mem blkmem __attribute__((section(".bss.page_aligned")));
static struct xg_blk blk;
static unsigned long errors;

/* With persistent grants the pool is the buffer (NULL: no copy); else our pages. */
#define BUF(i) (blk.persistent ? NULL : (void *)bufs[(i)])

static uint64_t rng_state = 88172645463325252ULL;

static uint64_t xorshift(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Markers for the host, which timestamps console output as it arrives (its wall clock
 * is right even when the guest's system time is virtual, as on a deterministic host). */
static void mark(const char *what, const char *pass)
{
    xg_printf("blkbench: %s %s\n", what, pass);
}

static uint64_t seq_pass(uint8_t op, unsigned long bytes, unsigned int qd)
{
    uint64_t t0 = xg_system_time_ns();
    unsigned long off;
    unsigned int i = 0;

    for (off = 0; off < bytes; off += XG_BLK_MAX_BYTES, i++)
        if (xg_blk_submit(&blk, op, off >> 9, BUF(i % qd), XG_BLK_MAX_BYTES) < 0)
            errors++;
    errors += (unsigned long)xg_blk_wait_all(&blk);
    if (op == BLKIF_OP_WRITE && xg_blk_flush(&blk) < 0)
        errors++;
    return xg_system_time_ns() - t0;
}

static uint64_t rand_pass(uint8_t op, unsigned long ops, unsigned long span_pages,
                          unsigned int qd)
{
    uint64_t t0 = xg_system_time_ns();
    unsigned long i;

    for (i = 0; i < ops; i++) {
        uint64_t page = xorshift() % span_pages;
        if (xg_blk_submit(&blk, op, page * 8, BUF(i % qd), 4096) < 0)
            errors++;
    }
    errors += (unsigned long)xg_blk_wait_all(&blk);
    if (op == BLKIF_OP_WRITE && xg_blk_flush(&blk) < 0)
        errors++;
    return xg_system_time_ns() - t0;
}

int main(void)
{
    unsigned long devid = xg_cmdline_ulong("devid", 51712);
    unsigned long bytes = xg_cmdline_ulong("mib", 8) << 20;
    unsigned long ops = xg_cmdline_ulong("ops", 1024);
    unsigned int qd = (unsigned int)xg_cmdline_ulong("qd", 8);
    uint64_t sw, sr, rw, rr;
    long rc;

    if (qd < 1 || qd > QD_MAX)
        qd = 8;
    rc = xg_blk_init();
    if (rc == 0)
        rc = xg_blk_open(&blk, &blkmem, devid, 0, (unsigned int)xg_cmdline_ulong("order", 0),
                         (int)xg_cmdline_ulong("persistent", 1));
    if (rc) {
        xg_printf("blkbench: FAIL (connect: %ld)\n", rc);
        return 1;
    }
    if (bytes > blk.sectors * 512)
        bytes = (unsigned long)(blk.sectors * 512) & ~(XG_BLK_MAX_BYTES - 1);
    mark("begin", "seq_write");
    sw = seq_pass(BLKIF_OP_WRITE, bytes, qd);
    mark("end", "seq_write");
    mark("begin", "seq_read");
    sr = seq_pass(BLKIF_OP_READ, bytes, qd);
    mark("end", "seq_read");
    mark("begin", "rand_write");
    rw = rand_pass(BLKIF_OP_WRITE, ops, bytes / XG_PAGE_SIZE, qd);
    mark("end", "rand_write");
    mark("begin", "rand_read");
    rr = rand_pass(BLKIF_OP_READ, ops, bytes / XG_PAGE_SIZE, qd);
    mark("end", "rand_read");
    xg_printf("blkbench: seq write 64k %lu KiB/s, seq read 64k %lu KiB/s\n",
              (unsigned long)((uint64_t)(bytes >> 10) * 1000000000ULL / (sw ? sw : 1)),
              (unsigned long)((uint64_t)(bytes >> 10) * 1000000000ULL / (sr ? sr : 1)));
    xg_printf("blkbench: rand write 4k %lu IOPS, rand read 4k %lu IOPS\n",
              (unsigned long)(ops * 1000000000ULL / (rw ? rw : 1)),
              (unsigned long)(ops * 1000000000ULL / (rr ? rr : 1)));
    xg_blk_close(&blk);
    xg_printf("blkbench: RESULT seq_write_ns=%lu seq_read_ns=%lu rand_write_ns=%lu "
              "rand_read_ns=%lu seq_bytes=%lu rand_ops=%lu errors=%lu\n",
              (unsigned long)sw, (unsigned long)sr, (unsigned long)rw, (unsigned long)rr,
              bytes, ops, errors);
    return errors != 0;
}
