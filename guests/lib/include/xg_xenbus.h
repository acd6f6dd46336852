/*
 * xg_xenbus.h - a XenStore client over the store ring, as a PV kernel's
 * xenbus driver does it.
 *
 * The ring page (struct xenstore_domain_interface) is start_info->store_mfn,
 * found through the M2P; its event channel is start_info->store_evtchn.
 * Requests are {xsd_sockmsg header, payload}; one is outstanding at a
 * time: we write it into req[], notify, and read rsp[] until the reply with
 * our req_id arrives.  XS_WATCH_EVENT messages met on the way (and later)
 * are queued, to be taken with xg_xs_read_watch().  Waits block on the
 * store port with events (xg_events.h), so xg_events_init() must come first.
 *
 * Every call returns >= 0 on success or a negative Xen errno (XEN_EACCES,
 * XEN_ENOENT, XEN_EAGAIN...) - xenstored's error string mapped back through
 * xs_wire.h's xsd_errors table.  Paths may be absolute or relative to the
 * domain's home (/local/domain/<id>).  tx 0 = no transaction.
 */
#ifndef XG_XENBUS_H
#define XG_XENBUS_H

#include "xg.h"
#include <xen/errno.h>
#include <xen/io/xs_wire.h>

typedef uint32_t xg_xs_tx_t;

#define XG_XS_WATCH_QUEUE 16          /* watch events kept before the oldest drops */

int xg_xenbus_init(void);            /* needs xg_events_init() first */

/* Read a node into buf (NUL-terminated); returns the value's length. */
int xg_xs_read(xg_xs_tx_t tx, const char *path, char *buf, size_t size);
int xg_xs_read_ulong(xg_xs_tx_t tx, const char *path, unsigned long *out);
int xg_xs_write(xg_xs_tx_t tx, const char *path, const char *value);
int xg_xs_printf(xg_xs_tx_t tx, const char *path, const char *fmt, ...) XG_PRINTF(3, 4);
int xg_xs_mkdir(xg_xs_tx_t tx, const char *path);
int xg_xs_rm(xg_xs_tx_t tx, const char *path);
/* Children as consecutive NUL-terminated names in buf; returns their count. */
int xg_xs_directory(xg_xs_tx_t tx, const char *path, char *buf, size_t size);
/* perms: strings like "n1", "r2" (owner first, its letter = everyone else). */
int xg_xs_set_perms(xg_xs_tx_t tx, const char *path, const char *const *perms,
                    unsigned int n);
int xg_xs_get_perms(xg_xs_tx_t tx, const char *path, char *buf, size_t size);
/* Our domain's id as XenStore knows it (reads "domid" in our home). */
int xg_xs_domid(unsigned long *domid);

int xg_xs_watch(const char *path, const char *token);
int xg_xs_unwatch(const char *path, const char *token);
/*
 * Take the oldest queued watch event (path, token), blocking for it until
 * deadline_ns (absolute system time, 0 = forever).  0, or -XEN_ETIMEDOUT.
 * Xenstored fires every new watch once at once, like Xen's.
 */
int xg_xs_read_watch(char *path, size_t path_size, char *token, size_t token_size,
                     uint64_t deadline_ns);
/* Queued events dropped because the queue was full. */
unsigned long xg_xs_watch_overflows(void);

int xg_xs_transaction_start(xg_xs_tx_t *tx);
/* Commit (abort = 0) or abort; -XEN_EAGAIN on commit means "conflict: retry". */
int xg_xs_transaction_end(xg_xs_tx_t tx, int abort);

/* "EACCES" for -XEN_EACCES, ...; "E?" when unknown. */
const char *xg_xs_errname(int err);

#endif
