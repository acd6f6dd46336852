/*
 * xg_blk.h - blkfront: a virtual block device over Xen's blkif ring.
 *
 * xg_blk_open() does the xenbus handshake as Linux's blkfront does: it
 * waits for the backend's InitWait, grants a ring of 2^order pages and
 * allocates an event channel for the backend, writes ring-ref (or
 * ring-page-order + ring-ref<N>), event-channel and protocol, switches to
 * Initialised, waits for Connected and reads sectors, sector-size, info
 * and the feature-* keys.  xg_blk_close() goes Closing -> Closed with the
 * backend and revokes everything.
 *
 * Memory: the caller supplies a page-aligned struct xg_blk_mem per device
 * (ring pages, indirect segment pages, and the pool for persistent grants),
 * so guests that do not use a disk carry none of it.
 *
 * Persistent grants (feature-persistent, as Linux's blkfront): when both ends
 * offer it, the pool pages are granted once at open and stay mapped by the
 * backend; data are copied between the caller's buffer and the pool (a NULL
 * buffer means "use the pool as is", for benchmarks that ignore the data).
 * Otherwise the caller's pages are granted per request (zero-copy).
 *
 * I/O: buffers are page-aligned, lengths multiples of 512 and at most
 * XG_BLK_MAX_BYTES.  A request of more than 11 pages goes out as
 * BLKIF_OP_INDIRECT when the backend offers feature-max-indirect-segments,
 * otherwise it is split.  Up to XG_BLK_QUEUE requests are in flight:
 * xg_blk_submit() queues, xg_blk_wait_all() collects (both block on the
 * event channel, never spin).  Needs xg_blk_init() (events, xenbus, the
 * grant table) first.  Calls return 0 or a negative Xen errno.
 */
#ifndef XG_BLK_H
#define XG_BLK_H

#include "xg.h"
#include "xg_mm.h"

#define xen_mb()  xg_mb()
#define xen_rmb() asm volatile ("" ::: "memory")
#define xen_wmb() xg_wmb()
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>
#include <xen/io/xenbus.h>

#define XG_BLK_MAX_PAGES   16                    /* 64 KiB per request */
#define XG_BLK_MAX_BYTES   (XG_BLK_MAX_PAGES * XG_PAGE_SIZE)
#define XG_BLK_QUEUE       16                    /* requests in flight */
#define XG_BLK_MAX_ORDER   2                     /* ring pages: up to 4 */

struct xg_blk_slot {
    int busy;
    unsigned int nr_grefs;            /* per-request grants to revoke on completion */
    grant_ref_t grefs[XG_BLK_MAX_PAGES + 1];
    void *copy_to;                    /* persistent READ: copy the pool here after */
    size_t copy_len;
    size_t ind_len;                   /* persistent: bytes the indirect page describes */
};

struct xg_blk_mem {
    char ring[(1 << XG_BLK_MAX_ORDER) * XG_PAGE_SIZE];
    struct blkif_request_segment indirect[XG_BLK_QUEUE]
                                         [XG_PAGE_SIZE / sizeof(struct blkif_request_segment)];
    char pool[XG_BLK_QUEUE][XG_BLK_MAX_BYTES];
} __attribute__((aligned(XG_PAGE_SIZE)));

struct xg_blk {
    unsigned long devid;
    char node[64];                 /* device/vbd/<devid> */
    char backend[128];
    domid_t backend_id;
    unsigned int order;
    evtchn_port_t port;
    blkif_front_ring_t ring;
    grant_ref_t gref_base;
    struct xg_blk_mem *mem;
    int persistent;                /* negotiated */
    /* what the backend told us */
    uint64_t sectors;
    unsigned long sector_size, info, max_indirect;
    int feature_flush, feature_barrier, feature_discard;
    /* in flight */
    struct xg_blk_slot slot[XG_BLK_QUEUE];
    uint32_t free_slots;           /* bit i: slot[i] is free */
    unsigned int inflight;
    unsigned long errors, notifies, requests;
    int16_t last_status;
};

/* index: which of the guest's devices (0..6 with the library's grant table of
 * XG_GNTTAB_ENTRIES): picks its grant refs; persistent: offer feature-persistent. */
/* What blkfront needs first: xg_events_init(), xg_xenbus_init(), xg_gnttab_init(). */
long xg_blk_init(void);
int xg_blk_open(struct xg_blk *b, struct xg_blk_mem *mem, unsigned long devid,
                unsigned int index, unsigned int order, int persistent);
int xg_blk_close(struct xg_blk *b);

int xg_blk_submit(struct xg_blk *b, uint8_t op, uint64_t sector, void *buf, size_t len);
/* Wait for every request in flight; returns how many failed since the last call. */
long xg_blk_wait_all(struct xg_blk *b);

/* Synchronous helpers: 0, -XEN_EIO (BLKIF_RSP_ERROR) or -XEN_EOPNOTSUPP. */
int xg_blk_read(struct xg_blk *b, uint64_t sector, void *buf, size_t len);
int xg_blk_write(struct xg_blk *b, uint64_t sector, const void *buf, size_t len);
int xg_blk_flush(struct xg_blk *b);
int xg_blk_barrier_write(struct xg_blk *b, uint64_t sector, const void *buf, size_t len);
int xg_blk_discard(struct xg_blk *b, uint64_t sector, uint64_t nr_sectors);

/* vdev name -> devid (xvda -> 51712), or 0 if not understood. */
unsigned long xg_blk_vdev_devid(const char *vdev);

#endif
