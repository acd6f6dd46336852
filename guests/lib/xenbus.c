/*
 * xenbus.c - XenStore client over the store ring (see xg_xenbus.h).
 *
 * Both rings use free-running 32-bit indices masked on access; we are the
 * producer of req[] and the consumer of rsp[].  The daemon is a peer we do
 * not trust blindly: a rsp_prod more than a ring ahead of rsp_cons, or a
 * message longer than XENSTORE_PAYLOAD_MAX, is a broken store and panics
 * the guest with the values seen.  After producing into req[] and after
 * consuming from rsp[] we notify the store port, so the daemon can go on
 * when it was waiting for either.  Everything runs in thread context; the
 * store port's handler only has to exist (it unmasks the port, so
 * SCHEDOP_block wakes up when the daemon notifies us).
 */
#include "xg.h"
#include "xg_events.h"

/* Give xs_wire.h's xsd_errors table Xen's errno values. */
#define EINVAL XEN_EINVAL
#define EACCES XEN_EACCES
#define EEXIST XEN_EEXIST
#define EISDIR XEN_EISDIR
#define ENOENT XEN_ENOENT
#define ENOMEM XEN_ENOMEM
#define ENOSPC XEN_ENOSPC
#define EIO XEN_EIO
#define ENOTEMPTY XEN_ENOTEMPTY
#define ENOSYS XEN_ENOSYS
#define EROFS XEN_EROFS
#define EBUSY XEN_EBUSY
#define EAGAIN XEN_EAGAIN
#define EISCONN XEN_EISCONN
#define E2BIG XEN_E2BIG
#define EPERM XEN_EPERM
#include "xg_xenbus.h"

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WATCH_PATH_MAX 256
#define WATCH_TOKEN_MAX 64

struct watch_event {
    char path[WATCH_PATH_MAX];
    char token[WATCH_TOKEN_MAX];
};

static struct xenstore_domain_interface *ring;
static evtchn_port_t store_port;
static uint32_t next_req_id = 1;
static unsigned long store_events;

static struct xsd_sockmsg msg_hdr;                  /* the message just read */
static char msg_body[XENSTORE_PAYLOAD_MAX + 1];     /* its payload, NUL added */

static struct watch_event watch_queue[XG_XS_WATCH_QUEUE];
static unsigned int watch_head, watch_count;
static unsigned long watch_overflows;

static void store_handler(evtchn_port_t port, void *data)
{
    (void)port;
    (void)data;
    store_events++;
}

int xg_xenbus_init(void)
{
    const start_info_t *si = xg_start_info;

    if (si->store_mfn == 0)
        return -XEN_ENODEV;
    ring = xg_mfn_to_virt(si->store_mfn);
    store_port = si->store_evtchn;
    return xg_evtchn_bind(store_port, store_handler, NULL);
}

/* ---- ring I/O ---- */

static int req_has_room(void *arg)
{
    (void)arg;
    return ring->req_prod - READ_ONCE(ring->req_cons) < XENSTORE_RING_SIZE;
}

static int rsp_has_data(void *arg)
{
    (void)arg;
    return READ_ONCE(ring->rsp_prod) != ring->rsp_cons;
}

static void ring_write(const void *data, size_t len)
{
    const char *p = data;

    while (len) {
        XENSTORE_RING_IDX cons, prod;
        size_t chunk;

        xg_wait_until(req_has_room, NULL, 0);
        cons = READ_ONCE(ring->req_cons);
        prod = ring->req_prod;
        xg_mb();
        if (prod - cons > XENSTORE_RING_SIZE)
            xg_panic("xenbus: req_prod %u - req_cons %u exceeds the ring\n", prod, cons);
        chunk = XENSTORE_RING_SIZE - (prod - cons);
        if (chunk > XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod))
            chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod);
        if (chunk > len)
            chunk = len;
        memcpy(ring->req + MASK_XENSTORE_IDX(prod), p, chunk);
        xg_wmb();
        ring->req_prod = prod + (XENSTORE_RING_IDX)chunk;
        xg_notify(store_port);
        p += chunk;
        len -= chunk;
    }
}

static void ring_read(void *data, size_t len)
{
    char *p = data;

    while (len) {
        XENSTORE_RING_IDX cons, prod;
        size_t chunk;

        xg_wait_until(rsp_has_data, NULL, 0);
        prod = READ_ONCE(ring->rsp_prod);
        cons = ring->rsp_cons;
        xg_rmb();
        if (prod - cons > XENSTORE_RING_SIZE)
            xg_panic("xenbus: rsp_prod %u - rsp_cons %u exceeds the ring\n", prod, cons);
        chunk = prod - cons;
        if (chunk > XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(cons))
            chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(cons);
        if (chunk > len)
            chunk = len;
        memcpy(p, ring->rsp + MASK_XENSTORE_IDX(cons), chunk);
        xg_mb();
        ring->rsp_cons = cons + (XENSTORE_RING_IDX)chunk;
        xg_notify(store_port);
        p += chunk;
        len -= chunk;
    }
}

static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);

    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void queue_watch_event(void)
{
    const char *path = msg_body;
    const char *token = path + strlen(path) + 1;
    struct watch_event *ev;

    if (token > msg_body + msg_hdr.len)       /* no token: malformed, drop it */
        return;
    if (watch_count == XG_XS_WATCH_QUEUE) {    /* full: drop the oldest */
        watch_head = (watch_head + 1) % XG_XS_WATCH_QUEUE;
        watch_count--;
        watch_overflows++;
    }
    ev = &watch_queue[(watch_head + watch_count) % XG_XS_WATCH_QUEUE];
    copy_str(ev->path, sizeof(ev->path), path);
    copy_str(ev->token, sizeof(ev->token), token);
    watch_count++;
}

/* Read one whole message into msg_hdr/msg_body; queue it if it is a watch event.
 * Returns 1 for a reply, 0 for a watch event. */
static int read_message(void)
{
    ring_read(&msg_hdr, sizeof(msg_hdr));
    if (msg_hdr.len > XENSTORE_PAYLOAD_MAX)
        xg_panic("xenbus: message type %u of %u bytes exceeds XENSTORE_PAYLOAD_MAX %u\n",
                 msg_hdr.type, msg_hdr.len, XENSTORE_PAYLOAD_MAX);
    ring_read(msg_body, msg_hdr.len);
    msg_body[msg_hdr.len] = '\0';
    if (msg_hdr.type == XS_WATCH_EVENT) {
        queue_watch_event();
        return 0;
    }
    return 1;
}

static int errno_of(const char *name)
{
    unsigned int i;

    for (i = 0; i < XG_ARRAY_SIZE(xsd_errors); i++)
        if (strcmp(name, xsd_errors[i].errstring) == 0)
            return -xsd_errors[i].errnum;
    return -XEN_EINVAL;
}

const char *xg_xs_errname(int err)
{
    unsigned int i;

    for (i = 0; i < XG_ARRAY_SIZE(xsd_errors); i++)
        if (-err == xsd_errors[i].errnum)
            return xsd_errors[i].errstring;
    if (err == -XEN_ETIMEDOUT)
        return "ETIMEDOUT";
    if (err == -XEN_ENODEV)
        return "ENODEV";
    return "E?";
}

struct xs_part {
    const char *data;
    size_t len;
};

/* One request/reply exchange; the reply is left in msg_body (msg_hdr.len bytes). */
static int xs_talk(uint32_t type, xg_xs_tx_t tx, const struct xs_part *parts,
                   unsigned int nparts)
{
    struct xsd_sockmsg hdr;
    size_t total = 0;
    unsigned int i;

    if (!ring)
        return -XEN_ENODEV;
    for (i = 0; i < nparts; i++)
        total += parts[i].len;
    if (total > XENSTORE_PAYLOAD_MAX)
        return -XEN_E2BIG;
    hdr.type = type;
    hdr.req_id = next_req_id++;
    hdr.tx_id = tx;
    hdr.len = (uint32_t)total;
    ring_write(&hdr, sizeof(hdr));
    for (i = 0; i < nparts; i++)
        ring_write(parts[i].data, parts[i].len);
    while (!read_message())
        ;
    if (msg_hdr.req_id != hdr.req_id)
        xg_panic("xenbus: reply req_id %u, expected %u (type %u)\n",
                 msg_hdr.req_id, hdr.req_id, msg_hdr.type);
    if (msg_hdr.type == XS_ERROR)
        return errno_of(msg_body);
    if (msg_hdr.type != type)
        xg_panic("xenbus: reply type %u to request type %u\n", msg_hdr.type, type);
    return (int)msg_hdr.len;
}

/* A request whose payload is one NUL-terminated string. */
static int xs_talk1(uint32_t type, xg_xs_tx_t tx, const char *s)
{
    struct xs_part p = { s, strlen(s) + 1 };
    return xs_talk(type, tx, &p, 1);
}

/* ---- operations ---- */

int xg_xs_read(xg_xs_tx_t tx, const char *path, char *buf, size_t size)
{
    int rc = xs_talk1(XS_READ, tx, path);

    if (rc < 0)
        return rc;
    if (size == 0 || (size_t)rc >= size)
        return -XEN_E2BIG;
    memcpy(buf, msg_body, (size_t)rc);
    buf[rc] = '\0';
    return rc;
}

int xg_xs_read_ulong(xg_xs_tx_t tx, const char *path, unsigned long *out)
{
    char buf[32];
    unsigned long v = 0;
    int rc = xg_xs_read(tx, path, buf, sizeof(buf)), i;

    if (rc < 0)
        return rc;
    if (rc == 0)
        return -XEN_EINVAL;
    for (i = 0; i < rc; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -XEN_EINVAL;
        v = v * 10 + (unsigned long)(buf[i] - '0');
    }
    *out = v;
    return 0;
}

int xg_xs_write(xg_xs_tx_t tx, const char *path, const char *value)
{
    struct xs_part p[2] = { { path, strlen(path) + 1 }, { value, strlen(value) } };
    int rc = xs_talk(XS_WRITE, tx, p, 2);
    return rc < 0 ? rc : 0;
}

int xg_xs_printf(xg_xs_tx_t tx, const char *path, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = xg_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof(buf))
        return -XEN_E2BIG;
    return xg_xs_write(tx, path, buf);
}

int xg_xs_mkdir(xg_xs_tx_t tx, const char *path)
{
    int rc = xs_talk1(XS_MKDIR, tx, path);
    return rc < 0 ? rc : 0;
}

int xg_xs_rm(xg_xs_tx_t tx, const char *path)
{
    int rc = xs_talk1(XS_RM, tx, path);
    return rc < 0 ? rc : 0;
}

/* Copy a reply of NUL-terminated strings into buf; returns how many. */
static int copy_strings(int len, char *buf, size_t size)
{
    int i, count = 0;

    if ((size_t)len > size)
        return -XEN_E2BIG;
    memcpy(buf, msg_body, (size_t)len);
    for (i = 0; i < len; i++)
        if (buf[i] == '\0')
            count++;
    return count;
}

int xg_xs_directory(xg_xs_tx_t tx, const char *path, char *buf, size_t size)
{
    int rc = xs_talk1(XS_DIRECTORY, tx, path);
    return rc < 0 ? rc : copy_strings(rc, buf, size);
}

int xg_xs_get_perms(xg_xs_tx_t tx, const char *path, char *buf, size_t size)
{
    int rc = xs_talk1(XS_GET_PERMS, tx, path);
    return rc < 0 ? rc : copy_strings(rc, buf, size);
}

int xg_xs_set_perms(xg_xs_tx_t tx, const char *path, const char *const *perms,
                    unsigned int n)
{
    struct xs_part p[1 + 8];
    unsigned int i;
    int rc;

    if (n == 0 || n > 8)
        return -XEN_EINVAL;
    p[0].data = path;
    p[0].len = strlen(path) + 1;
    for (i = 0; i < n; i++) {
        p[1 + i].data = perms[i];
        p[1 + i].len = strlen(perms[i]) + 1;
    }
    rc = xs_talk(XS_SET_PERMS, tx, p, 1 + n);
    return rc < 0 ? rc : 0;
}

int xg_xs_domid(unsigned long *domid)
{
    return xg_xs_read_ulong(0, "domid", domid);
}

int xg_xs_watch(const char *path, const char *token)
{
    struct xs_part p[2] = { { path, strlen(path) + 1 }, { token, strlen(token) + 1 } };
    int rc = xs_talk(XS_WATCH, 0, p, 2);
    return rc < 0 ? rc : 0;
}

int xg_xs_unwatch(const char *path, const char *token)
{
    struct xs_part p[2] = { { path, strlen(path) + 1 }, { token, strlen(token) + 1 } };
    int rc = xs_talk(XS_UNWATCH, 0, p, 2);
    return rc < 0 ? rc : 0;
}

int xg_xs_read_watch(char *path, size_t path_size, char *token, size_t token_size,
                     uint64_t deadline_ns)
{
    struct watch_event *ev;

    if (!ring)
        return -XEN_ENODEV;
    while (watch_count == 0) {
        int rc = xg_wait_until(rsp_has_data, NULL, deadline_ns);
        if (rc < 0)
            return rc;
        if (read_message())
            xg_panic("xenbus: unsolicited reply type %u req_id %u\n",
                     msg_hdr.type, msg_hdr.req_id);
    }
    ev = &watch_queue[watch_head];
    copy_str(path, path_size, ev->path);
    copy_str(token, token_size, ev->token);
    watch_head = (watch_head + 1) % XG_XS_WATCH_QUEUE;
    watch_count--;
    return 0;
}

unsigned long xg_xs_watch_overflows(void)
{
    return watch_overflows;
}

int xg_xs_transaction_start(xg_xs_tx_t *tx)
{
    unsigned long id = 0;
    int rc = xs_talk1(XS_TRANSACTION_START, 0, ""), i;

    if (rc < 0)
        return rc;
    for (i = 0; i < rc && msg_body[i]; i++) {
        if (msg_body[i] < '0' || msg_body[i] > '9')
            xg_panic("xenbus: transaction id \"%s\" is not a number\n", msg_body);
        id = id * 10 + (unsigned long)(msg_body[i] - '0');
    }
    *tx = (xg_xs_tx_t)id;
    return 0;
}

int xg_xs_transaction_end(xg_xs_tx_t tx, int abort)
{
    int rc = xs_talk1(XS_TRANSACTION_END, tx, abort ? "F" : "T");
    return rc < 0 ? rc : 0;
}
