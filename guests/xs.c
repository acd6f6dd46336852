/*
 * xs - a guest reads, writes and watches its own XenStore subtree through
 * the store ring (lib/xenbus.c), and is refused everybody else's.
 *
 * Checks, one "xs: <name>: ok" or "xs: <name>: FAIL (...)" line each:
 *   identity   - "domid" and "name" read relative to the home path equal
 *                the same nodes read by absolute /local/domain/<id>/ path
 *   write      - data/greeting and data/count written and read back
 *   watch      - a watch on data/ fires once on registration, then with
 *                the written path and our token after a write
 *   directory  - data/ lists greeting and count
 *   mkdir-rm   - data/dir made, removed, then reading it gives ENOENT
 *   tx-commit  - a write inside a transaction is invisible outside it until
 *                the commit, visible after
 *   tx-abort   - an aborted transaction's write never appears
 *   tx-conflict- a node read in a transaction and changed outside it makes
 *                the commit fail with EAGAIN
 *   eacces     - listing /local/domain, and (cmdline other=<domid>) reading
 *                /local/domain/<other>/name and writing its data/ node all
 *                fail with EACCES
 *   unwatch    - after XS_UNWATCH a write queues no event
 * Expected last line: "xs: PASS" (else "xs: FAIL (k of n failed)").
 */
#include "xg.h"
#include "xg_events.h"
#include "xg_xenbus.h"

#define WATCH_WAIT_NS 5000000000ULL      /* 5 s of system time for one event */

static unsigned int checks, failed;
static char home[64];

static void check(const char *name, int ok, const char *fmt, ...) XG_PRINTF(3, 4);
static void check(const char *name, int ok, const char *fmt, ...)
{
    char why[160];
    va_list ap;

    checks++;
    if (ok) {
        xg_printf("xs: %s: ok\n", name);
        return;
    }
    failed++;
    va_start(ap, fmt);
    xg_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    xg_printf("xs: %s: FAIL (%s)\n", name, why);
}

static const char *abs_path(char *buf, size_t size, const char *rel)
{
    xg_snprintf(buf, size, "%s/%s", home, rel);
    return buf;
}

static int next_watch(char *path, size_t psize, char *token, size_t tsize)
{
    return xg_xs_read_watch(path, psize, token, tsize,
                            xg_system_time_ns() + WATCH_WAIT_NS);
}

static void check_identity(unsigned long domid)
{
    char name[64], name2[64], path[128];
    unsigned long domid2 = ~0UL;
    int rc1 = xg_xs_read(0, "name", name, sizeof(name));
    int rc2 = xg_xs_read(0, abs_path(path, sizeof(path), "name"), name2, sizeof(name2));
    int rc3 = xg_xs_read_ulong(0, abs_path(path, sizeof(path), "domid"), &domid2);

    xg_printf("xs: name=%s domid=%lu\n", rc1 >= 0 ? name : "?", domid);
    check("identity", rc1 > 0 && rc2 == rc1 && strcmp(name, name2) == 0 && rc3 == 0 &&
          domid2 == domid, "name %d/%d, %s/domid %d = %lu", rc1, rc2, home, rc3, domid2);
}

static void check_write(void)
{
    char buf[64];
    int rc1 = xg_xs_write(0, "data/greeting", "hello from xs");
    int rc2 = xg_xs_printf(0, "data/count", "%d", 42);
    int rc3 = xg_xs_read(0, "data/greeting", buf, sizeof(buf));
    int same = rc3 >= 0 && strcmp(buf, "hello from xs") == 0;
    int rc4 = xg_xs_read(0, "data/count", buf, sizeof(buf));

    check("write", rc1 == 0 && rc2 == 0 && same && rc4 == 2 && strcmp(buf, "42") == 0,
          "write %d/%d, read back %d/%d \"%s\"", rc1, rc2, rc3, rc4, rc4 >= 0 ? buf : "");
}

static void check_watch(void)
{
    char data[96], want[128], path[128], token[32];
    int rc, first, second = -1, extra = 0;

    abs_path(data, sizeof(data), "data");
    rc = xg_xs_watch(data, "xs-data");
    if (rc < 0) {
        check("watch", 0, "XS_WATCH %s: %s", data, xg_xs_errname(rc));
        return;
    }
    /* xenstored fires a new watch once, with the watched path itself. */
    first = next_watch(path, sizeof(path), token, sizeof(token));
    if (first == 0 && (strcmp(path, data) || strcmp(token, "xs-data")))
        first = 1;
    rc = xg_xs_write(0, "data/watched", "1");
    if (rc == 0) {
        second = next_watch(path, sizeof(path), token, sizeof(token));
        abs_path(want, sizeof(want), "data/watched");
        if (second == 0 && (strcmp(path, want) || strcmp(token, "xs-data")))
            extra = 1;
    }
    check("watch", first == 0 && second == 0 && !extra,
          "initial event %d, event after write %d, last %s token %s", first, second,
          path, token);
}

static void check_directory(void)
{
    char buf[512];
    int n = xg_xs_directory(0, "data", buf, sizeof(buf)), i, greeting = 0, count = 0;
    const char *p = buf;

    for (i = 0; i < n; i++) {
        greeting |= strcmp(p, "greeting") == 0;
        count |= strcmp(p, "count") == 0;
        p += strlen(p) + 1;
    }
    check("directory", n >= 2 && greeting && count, "%d entries, greeting %d count %d",
          n, greeting, count);
}

static void check_mkdir_rm(void)
{
    char buf[16];
    int rc1 = xg_xs_mkdir(0, "data/dir");
    int rc2 = xg_xs_read(0, "data/dir", buf, sizeof(buf));
    int rc3 = xg_xs_rm(0, "data/dir");
    int rc4 = xg_xs_read(0, "data/dir", buf, sizeof(buf));

    check("mkdir-rm", rc1 == 0 && rc2 == 0 && rc3 == 0 && rc4 == -XEN_ENOENT,
          "mkdir %d, read %d, rm %d, read after rm %s", rc1, rc2, rc3, xg_xs_errname(rc4));
}

static void check_transactions(void)
{
    char buf[16];
    xg_xs_tx_t tx = 0;
    int rc1, rc2, rc3, rc4, rc5;

    rc1 = xg_xs_transaction_start(&tx);
    rc2 = xg_xs_write(tx, "data/tx", "committed");
    rc3 = xg_xs_read(0, "data/tx", buf, sizeof(buf));           /* outside: not yet */
    rc4 = xg_xs_transaction_end(tx, 0);
    rc5 = xg_xs_read(0, "data/tx", buf, sizeof(buf));
    check("tx-commit", rc1 == 0 && tx != 0 && rc2 == 0 && rc3 == -XEN_ENOENT && rc4 == 0 &&
          rc5 > 0 && strcmp(buf, "committed") == 0,
          "start %d id %u, write %d, outside read %s, commit %d, read %d",
          rc1, tx, rc2, xg_xs_errname(rc3), rc4, rc5);

    rc1 = xg_xs_transaction_start(&tx);
    rc2 = xg_xs_write(tx, "data/aborted", "x");
    rc3 = xg_xs_transaction_end(tx, 1);
    rc4 = xg_xs_read(0, "data/aborted", buf, sizeof(buf));
    check("tx-abort", rc1 == 0 && rc2 == 0 && rc3 == 0 && rc4 == -XEN_ENOENT,
          "start %d, write %d, abort %d, read %s", rc1, rc2, rc3, xg_xs_errname(rc4));

    rc1 = xg_xs_transaction_start(&tx);
    rc2 = xg_xs_read(tx, "data/count", buf, sizeof(buf));
    rc3 = xg_xs_write(0, "data/count", "43");                   /* a concurrent change */
    rc4 = xg_xs_write(tx, "data/count", "44");
    rc5 = xg_xs_transaction_end(tx, 0);
    check("tx-conflict", rc1 == 0 && rc2 >= 0 && rc3 == 0 && rc4 == 0 && rc5 == -XEN_EAGAIN,
          "start %d, read %d, outside write %d, write %d, commit %s",
          rc1, rc2, rc3, rc4, xg_xs_errname(rc5));
}

static void check_eacces(void)
{
    char buf[256], path[96];
    unsigned long other = xg_cmdline_ulong("other", ~0UL);
    int rc1 = xg_xs_directory(0, "/local/domain", buf, sizeof(buf));
    int rc2 = -XEN_EACCES, rc3 = -XEN_EACCES;

    if (other != ~0UL) {
        xg_snprintf(path, sizeof(path), "/local/domain/%lu/name", other);
        rc2 = xg_xs_read(0, path, buf, sizeof(buf));
        xg_snprintf(path, sizeof(path), "/local/domain/%lu/data/intruder", other);
        rc3 = xg_xs_write(0, path, "x");
    }
    check("eacces", rc1 == -XEN_EACCES && rc2 == -XEN_EACCES && rc3 == -XEN_EACCES,
          "list /local/domain %s, read other's name %s, write other's data %s",
          xg_xs_errname(rc1), xg_xs_errname(rc2), xg_xs_errname(rc3));
}

static void check_unwatch(void)
{
    char data[96], path[128], token[32];
    int rc1 = xg_xs_unwatch(abs_path(data, sizeof(data), "data"), "xs-data");
    int rc2, rc3, rc4, drained = 0;

    /* Events of the writes made while the watch was set are queued: drop
     * them (a deadline in the past never blocks). */
    while (xg_xs_read_watch(path, sizeof(path), token, sizeof(token), 1) == 0)
        drained++;
    rc2 = xg_xs_write(0, "data/after-unwatch", "1");
    /* A round trip after the write: any event it caused is queued by now. */
    rc3 = xg_xs_read(0, "data/after-unwatch", path, sizeof(path));
    rc4 = xg_xs_read_watch(path, sizeof(path), token, sizeof(token), 1);
    check("unwatch", rc1 == 0 && drained > 0 && rc2 == 0 && rc3 == 1 &&
          rc4 == -XEN_ETIMEDOUT,
          "unwatch %d, %d earlier events, write %d, read %d, pending event %d (%s)",
          rc1, drained, rc2, rc3, rc4, rc4 == 0 ? path : "-");
}

int main(void)
{
    unsigned long domid = 0;
    int rc;

    rc = xg_events_init();
    if (rc == 0)
        rc = xg_xenbus_init();
    if (rc < 0) {
        xg_printf("xs: FAIL (init: %d)\n", rc);
        return 1;
    }
    rc = xg_xs_domid(&domid);
    if (rc < 0) {
        xg_printf("xs: FAIL (reading domid: %s)\n", xg_xs_errname(rc));
        return 1;
    }
    xg_snprintf(home, sizeof(home), "/local/domain/%lu", domid);
    check_identity(domid);
    check_write();
    check_watch();
    check_directory();
    check_mkdir_rm();
    check_transactions();
    check_eacces();
    check_unwatch();
    if (failed)
        xg_printf("xs: FAIL (%u of %u failed)\n", failed, checks);
    else
        xg_printf("xs: PASS\n");
    return 0;
}
