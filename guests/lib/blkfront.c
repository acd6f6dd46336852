/*
 * blkfront.c - the frontend half of Xen's split block device (xg_blk.h).
 *
 * Grant refs: device <index> uses refs XG_BLK_GREF0 + index*XG_BLK_GREFS on:
 * the ring pages first, then (XG_BLK_MAX_PAGES + 1) per queue slot - the
 * data pages and the indirect segment page of that slot's request.  Without
 * persistent grants they are revoked when the response comes back (the
 * backend has unmapped by then; a grant still in use is reported and leaked,
 * never reused); with them, the slot's pool pages and indirect page are
 * granted at open and revoked at close.
 *
 * Cost per request matters (every guest instruction is emulated): a free
 * slot is found with one bit scan, and with persistent grants a slot's
 * indirect page - whose segments never change for a given length - is only
 * rewritten when the length changes.
 */
#include "xg_blk.h"
#include "xg_events.h"
#include "xg_xenbus.h"

#define XG_BLK_GREF0  16
#define XG_BLK_GREFS  (4 + XG_BLK_QUEUE * (XG_BLK_MAX_PAGES + 1))
#define XG_BLK_DEVS   ((XG_GNTTAB_ENTRIES - XG_BLK_GREF0) / XG_BLK_GREFS)
#define STATE_WAIT_NS 10000000000ULL      /* 10 s of system time per handshake step */

long xg_blk_init(void)
{
    long rc = xg_events_init();

    if (rc == 0)
        rc = xg_xenbus_init();
    if (rc == 0)
        rc = xg_gnttab_init();
    return rc;
}
#define ALL_SLOTS     ((uint32_t)((1ULL << XG_BLK_QUEUE) - 1))

_Static_assert(XG_BLK_QUEUE <= 32, "free_slots is a 32-bit mask");

unsigned long xg_blk_vdev_devid(const char *vdev)
{
    if (strncmp(vdev, "xvd", 3) == 0 && vdev[3] >= 'a' && vdev[3] <= 'p' && vdev[4] == 0)
        return (202UL << 8) | ((unsigned long)(vdev[3] - 'a') << 4);
    return 0;
}

static int be_path(struct xg_blk *b, char *buf, size_t size, const char *key)
{
    return xg_snprintf(buf, size, "%s/%s", b->backend, key);
}

static unsigned long be_ulong(struct xg_blk *b, const char *key, unsigned long def)
{
    char path[192];
    unsigned long v;

    be_path(b, path, sizeof(path), key);
    return xg_xs_read_ulong(0, path, &v) == 0 ? v : def;
}

static int fe_write(struct xg_blk *b, const char *key, const char *fmt, unsigned long v)
{
    char path[128];

    xg_snprintf(path, sizeof(path), "%s/%s", b->node, key);
    return xg_xs_printf(0, path, fmt, v);
}

static int switch_state(struct xg_blk *b, enum xenbus_state st)
{
    return fe_write(b, "state", "%lu", (unsigned long)st);
}

/* Wait until the backend's state is one of mask (bit per XenbusState). */
static int wait_backend(struct xg_blk *b, unsigned long mask, unsigned long *got)
{
    char path[192], wpath[192], token[32];
    uint64_t deadline = xg_system_time_ns() + STATE_WAIT_NS;
    unsigned long st = 0;
    int rc;

    be_path(b, path, sizeof(path), "state");
    rc = xg_xs_watch(path, "blkfront");
    if (rc < 0)
        return rc;
    for (;;) {
        if (xg_xs_read_ulong(0, path, &st) == 0 && (mask >> st & 1))
            break;
        rc = xg_xs_read_watch(wpath, sizeof(wpath), token, sizeof(token), deadline);
        if (rc < 0)
            break;
    }
    xg_xs_unwatch(path, "blkfront");
    *got = st;
    return (mask >> st & 1) ? 0 : rc;
}

static void blk_event(evtchn_port_t port, void *data)
{
    (void)port;
    ((struct xg_blk *)data)->notifies++;
}

static grant_ref_t slot_gref(struct xg_blk *b, unsigned int slot, unsigned int k)
{
    return b->gref_base + 4 + slot * (XG_BLK_MAX_PAGES + 1) + k;
}

/* Grant (or revoke) every pool and indirect page: the persistent grants. */
static int pool_grants(struct xg_blk *b, int grant)
{
    unsigned int slot, k;
    int rc = 0;

    for (slot = 0; slot < XG_BLK_QUEUE; slot++) {
        for (k = 0; k <= XG_BLK_MAX_PAGES; k++) {
            grant_ref_t g = slot_gref(b, slot, k);
            void *page = k < XG_BLK_MAX_PAGES ? (void *)(b->mem->pool[slot] + k * XG_PAGE_SIZE)
                                              : (void *)b->mem->indirect[slot];
            if (grant)
                xg_gnttab_grant(g, b->backend_id, xg_virt_to_mfn(page), 0);
            else if (xg_gnttab_end(g) < 0)
                rc = -XEN_EBUSY;
        }
    }
    return rc;
}

int xg_blk_open(struct xg_blk *b, struct xg_blk_mem *mem, unsigned long devid,
                unsigned int index, unsigned int order, int persistent)
{
    char path[128];
    unsigned long v, st;
    blkif_sring_t *sring;
    unsigned int i;
    long port;
    int rc;

    if (index >= XG_BLK_DEVS || order > XG_BLK_MAX_ORDER)
        return -XEN_EINVAL;
    memset(b, 0, sizeof(*b));
    b->free_slots = ALL_SLOTS;
    b->mem = mem;
    b->devid = devid;
    b->order = order;
    b->gref_base = XG_BLK_GREF0 + index * XG_BLK_GREFS;
    xg_snprintf(b->node, sizeof(b->node), "device/vbd/%lu", devid);
    xg_snprintf(path, sizeof(path), "%s/backend", b->node);
    rc = xg_xs_read(0, path, b->backend, sizeof(b->backend));
    if (rc < 0)
        return rc;
    xg_snprintf(path, sizeof(path), "%s/backend-id", b->node);
    rc = xg_xs_read_ulong(0, path, &v);
    if (rc < 0)
        return rc;
    b->backend_id = (domid_t)v;
    rc = wait_backend(b, 1UL << XenbusStateInitWait | 1UL << XenbusStateConnected, &st);
    if (rc < 0)
        return rc;
    if (order > be_ulong(b, "max-ring-page-order", 0))
        order = b->order = 0;

    sring = (blkif_sring_t *)mem->ring;
    memset(sring, 0, XG_PAGE_SIZE << order);
    SHARED_RING_INIT(sring);
    FRONT_RING_INIT(&b->ring, sring, XG_PAGE_SIZE << order);
    for (i = 0; i < (1U << order); i++)
        xg_gnttab_grant(b->gref_base + i, b->backend_id,
                        xg_virt_to_mfn(mem->ring + i * XG_PAGE_SIZE), 0);
    port = xg_evtchn_alloc_unbound(b->backend_id, blk_event, b);
    if (port < 0)
        return (int)port;
    b->port = (evtchn_port_t)port;

    if (order == 0) {
        rc = fe_write(b, "ring-ref", "%lu", b->gref_base);
    } else {
        rc = fe_write(b, "ring-page-order", "%lu", order);
        for (i = 0; rc >= 0 && i < (1U << order); i++) {
            char key[16];
            xg_snprintf(key, sizeof(key), "ring-ref%u", i);
            rc = fe_write(b, key, "%lu", b->gref_base + i);
        }
    }
    if (rc >= 0)
        rc = fe_write(b, "event-channel", "%lu", b->port);
    if (rc >= 0)
        rc = fe_write(b, "feature-persistent", "%lu", persistent ? 1UL : 0UL);
    if (rc >= 0) {
        xg_snprintf(path, sizeof(path), "%s/protocol", b->node);
        rc = xg_xs_write(0, path, XEN_IO_PROTO_ABI_NATIVE);
    }
    if (rc >= 0)
        rc = switch_state(b, XenbusStateInitialised);
    if (rc >= 0)
        rc = wait_backend(b, 1UL << XenbusStateConnected | 1UL << XenbusStateClosing, &st);
    if (rc >= 0 && st != XenbusStateConnected)
        rc = -XEN_EIO;
    if (rc < 0)
        return rc;
    b->sectors = be_ulong(b, "sectors", 0);
    b->sector_size = be_ulong(b, "sector-size", 512);
    b->info = be_ulong(b, "info", 0);
    b->feature_flush = (int)be_ulong(b, "feature-flush-cache", 0);
    b->feature_barrier = (int)be_ulong(b, "feature-barrier", 0);
    b->feature_discard = (int)be_ulong(b, "feature-discard", 0);
    b->max_indirect = be_ulong(b, "feature-max-indirect-segments", 0);
    b->persistent = persistent && be_ulong(b, "feature-persistent", 0);
    if (b->persistent)
        pool_grants(b, 1);
    return switch_state(b, XenbusStateConnected);
}

int xg_blk_close(struct xg_blk *b)
{
    unsigned long st;
    unsigned int i;
    int rc;

    xg_blk_wait_all(b);
    rc = switch_state(b, XenbusStateClosing);
    if (rc >= 0)
        rc = wait_backend(b, 1UL << XenbusStateClosing | 1UL << XenbusStateClosed, &st);
    if (rc >= 0)
        rc = switch_state(b, XenbusStateClosed);
    if (rc >= 0)
        rc = wait_backend(b, 1UL << XenbusStateClosed, &st);
    for (i = 0; i < (1U << b->order); i++)
        if (xg_gnttab_end(b->gref_base + i) < 0 && rc >= 0)
            rc = -XEN_EBUSY;
    if (b->persistent && pool_grants(b, 0) < 0 && rc >= 0)
        rc = -XEN_EBUSY;
    xg_evtchn_close(b->port);
    if (rc >= 0)
        rc = switch_state(b, XenbusStateInitialising);    /* ready to reconnect */
    return rc;
}

/* Take every response on the ring; called with events masked (xg_wait_until). */
static void collect(struct xg_blk *b)
{
    RING_IDX rp, i;
    int more;

    do {
        rp = b->ring.sring->rsp_prod;
        xen_rmb();
        for (i = b->ring.rsp_cons; i != rp; i++) {
            blkif_response_t *rsp = RING_GET_RESPONSE(&b->ring, i);
            uint64_t id = rsp->id;
            struct xg_blk_slot *s;
            unsigned int k;

            if (id >= XG_BLK_QUEUE || !b->slot[id].busy)
                continue;                     /* not ours: ignore */
            s = &b->slot[id];
            b->last_status = rsp->status;
            if (rsp->status != BLKIF_RSP_OKAY)
                b->errors++;
            for (k = 0; k < s->nr_grefs; k++)
                if (xg_gnttab_end(s->grefs[k]) < 0)
                    xg_printf("blkfront: grant %u still in use\n", s->grefs[k]);
            if (s->copy_to && rsp->status == BLKIF_RSP_OKAY)
                memcpy(s->copy_to, b->mem->pool[id], s->copy_len);
            s->copy_to = NULL;
            s->busy = 0;
            b->free_slots |= 1U << id;
            b->inflight--;
        }
        b->ring.rsp_cons = rp;
        RING_FINAL_CHECK_FOR_RESPONSES(&b->ring, more);
    } while (more);
}

static int slot_free_cond(void *arg)
{
    struct xg_blk *b = arg;

    collect(b);
    return b->inflight < XG_BLK_QUEUE && !RING_FULL(&b->ring);
}

static int all_done_cond(void *arg)
{
    struct xg_blk *b = arg;

    collect(b);
    return b->inflight == 0;
}

/* A free slot, marked busy (events masked on return, as xg_wait_until leaves them). */
static int alloc_slot(struct xg_blk *b)
{
    unsigned int i;
    int rc = xg_wait_until(slot_free_cond, b, 0);

    xg_local_irq_disable();
    if (rc < 0)
        return -XEN_ETIMEDOUT;
    if (!b->free_slots)
        return -XEN_EBUSY;
    i = (unsigned int)__builtin_ctz(b->free_slots);
    b->free_slots &= ~(1U << i);
    b->slot[i].busy = 1;
    b->slot[i].nr_grefs = 0;
    b->inflight++;
    return (int)i;
}

static void push(struct xg_blk *b)
{
    int notify;

    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&b->ring, notify);
    b->requests++;
    if (notify)
        xg_notify(b->port);
}

int xg_blk_submit(struct xg_blk *b, uint8_t op, uint64_t sector, void *buf, size_t len)
{
    unsigned int npages, nfill, k, nsect;
    struct xg_blk_slot *s;
    int slot, readonly = op != BLKIF_OP_READ;
    struct blkif_request_segment *segs;

    if (((unsigned long)buf & (XG_PAGE_SIZE - 1)) || (len & 511) || len > XG_BLK_MAX_BYTES ||
        (!buf && !b->persistent))
        return -XEN_EINVAL;
    npages = (unsigned int)((len + XG_PAGE_SIZE - 1) / XG_PAGE_SIZE);
    if (npages > BLKIF_MAX_SEGMENTS_PER_REQUEST && b->max_indirect < npages) {
        /* no indirect: split */
        int rc = xg_blk_submit(b, op, sector, buf, BLKIF_MAX_SEGMENTS_PER_REQUEST * XG_PAGE_SIZE);
        if (rc < 0)
            return rc;
        return xg_blk_submit(b, op, sector + BLKIF_MAX_SEGMENTS_PER_REQUEST * 8,
                             buf ? (char *)buf + BLKIF_MAX_SEGMENTS_PER_REQUEST * XG_PAGE_SIZE
                                 : NULL,
                             len - BLKIF_MAX_SEGMENTS_PER_REQUEST * XG_PAGE_SIZE);
    }
    slot = alloc_slot(b);
    if (slot < 0)
        return slot;
    s = &b->slot[slot];
    s->copy_to = NULL;
    if (b->persistent && buf) {
        if (op == BLKIF_OP_READ) {
            s->copy_to = buf;
            s->copy_len = len;
        } else {
            memcpy(b->mem->pool[slot], buf, len);
        }
    }
    nfill = npages;
    segs = npages > BLKIF_MAX_SEGMENTS_PER_REQUEST ? b->mem->indirect[slot] : NULL;
    if (!segs) {
        blkif_request_t *req = RING_GET_REQUEST(&b->ring, b->ring.req_prod_pvt);
        req->operation = op;
        req->nr_segments = (uint8_t)npages;
        req->handle = (blkif_vdev_t)b->devid;
        req->id = (uint64_t)slot;
        req->sector_number = sector;
        segs = req->seg;
    } else {
        blkif_request_indirect_t *req =
            (blkif_request_indirect_t *)RING_GET_REQUEST(&b->ring, b->ring.req_prod_pvt);
        grant_ref_t ig = slot_gref(b, (unsigned int)slot, XG_BLK_MAX_PAGES);
        req->operation = BLKIF_OP_INDIRECT;
        req->indirect_op = op;
        req->nr_segments = (uint16_t)npages;
        req->id = (uint64_t)slot;
        req->sector_number = sector;
        req->handle = (blkif_vdev_t)b->devid;
        req->indirect_grefs[0] = ig;
        if (!b->persistent) {
            xg_gnttab_grant(ig, b->backend_id, xg_virt_to_mfn(segs), 1);
            s->grefs[s->nr_grefs++] = ig;
        } else if (s->ind_len == len) {
            nfill = 0;                   /* the page already says so: nothing to write */
        } else {
            s->ind_len = len;
        }
    }
    for (k = 0; k < nfill; k++) {
        grant_ref_t g = slot_gref(b, (unsigned int)slot, k);
        size_t left = len - k * XG_PAGE_SIZE;

        nsect = left >= XG_PAGE_SIZE ? 8 : (unsigned int)(left >> 9);
        if (!b->persistent) {
            xg_gnttab_grant(g, b->backend_id, xg_virt_to_mfn((char *)buf + k * XG_PAGE_SIZE),
                            readonly);
            s->grefs[s->nr_grefs++] = g;
        }
        segs[k].gref = g;
        segs[k].first_sect = 0;
        segs[k].last_sect = (uint8_t)(nsect - 1);
    }
    b->ring.req_prod_pvt++;
    push(b);
    return 0;
}

static int simple(struct xg_blk *b, uint8_t op, uint64_t sector, uint64_t nr)
{
    int slot = alloc_slot(b);
    blkif_request_t *req;

    if (slot < 0)
        return slot;
    req = RING_GET_REQUEST(&b->ring, b->ring.req_prod_pvt);
    if (op == BLKIF_OP_DISCARD) {
        blkif_request_discard_t *d = (blkif_request_discard_t *)req;
        d->operation = op;
        d->flag = 0;
        d->handle = (blkif_vdev_t)b->devid;
        d->id = (uint64_t)slot;
        d->sector_number = sector;
        d->nr_sectors = nr;
    } else {
        req->operation = op;
        req->nr_segments = 0;
        req->handle = (blkif_vdev_t)b->devid;
        req->id = (uint64_t)slot;
        req->sector_number = sector;
    }
    b->ring.req_prod_pvt++;
    push(b);
    return 0;
}

long xg_blk_wait_all(struct xg_blk *b)
{
    unsigned long before = b->errors;

    xg_wait_until(all_done_cond, b, 0);
    xg_local_irq_disable();
    return (long)(b->errors - before);
}

static int sync_result(struct xg_blk *b, int rc, unsigned long before)
{
    if (rc < 0)
        return rc;
    xg_wait_until(all_done_cond, b, 0);
    xg_local_irq_disable();
    if (b->errors == before)
        return 0;
    return b->last_status == BLKIF_RSP_EOPNOTSUPP ? -XEN_EOPNOTSUPP : -XEN_EIO;
}

#define SYNC(b, expr) ({ unsigned long e_ = (b)->errors; sync_result((b), (expr), e_); })

int xg_blk_read(struct xg_blk *b, uint64_t sector, void *buf, size_t len)
{
    return SYNC(b, xg_blk_submit(b, BLKIF_OP_READ, sector, buf, len));
}

int xg_blk_write(struct xg_blk *b, uint64_t sector, const void *buf, size_t len)
{
    return SYNC(b, xg_blk_submit(b, BLKIF_OP_WRITE, sector, (void *)buf, len));
}

int xg_blk_barrier_write(struct xg_blk *b, uint64_t sector, const void *buf, size_t len)
{
    return SYNC(b, xg_blk_submit(b, BLKIF_OP_WRITE_BARRIER, sector, (void *)buf, len));
}

int xg_blk_flush(struct xg_blk *b)
{
    return SYNC(b, simple(b, BLKIF_OP_FLUSH_DISKCACHE, 0, 0));
}

int xg_blk_discard(struct xg_blk *b, uint64_t sector, uint64_t nr_sectors)
{
    return SYNC(b, simple(b, BLKIF_OP_DISCARD, sector, nr_sectors));
}
