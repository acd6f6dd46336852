/*
 * shutdown - a guest that obeys the toolstack's shutdown requests, as a
 * Linux PV kernel's drivers/xen/manage.c does.
 *
 * Advertises control/feature-poweroff and control/feature-reboot, watches
 * control/shutdown and prints "shutdown: ready".  When the toolstack writes
 * a request there (`xenpy shutdown`, xl shutdown), the guest acknowledges
 * it by clearing the node in a transaction (retried on EAGAIN), prints
 * "shutdown: <request>" and shuts down with the matching reason:
 * poweroff and halt -> SHUTDOWN_poweroff, reboot -> SHUTDOWN_reboot,
 * crash -> SHUTDOWN_crash.  An empty value (the initial watch event, our
 * own acknowledgement) is ignored; an unknown request is reported
 * ("shutdown: ignoring unknown request \"<x>\"") and the guest waits on.
 */
#include "xg.h"
#include "xg_events.h"
#include "xg_xenbus.h"

struct request {
    const char *name;
    unsigned int reason;
};

static const struct request requests[] = {
    { "poweroff", SHUTDOWN_poweroff },
    { "halt", SHUTDOWN_poweroff },
    { "reboot", SHUTDOWN_reboot },
    { "crash", SHUTDOWN_crash },
};

/* Take the request: read and clear control/shutdown in one transaction. */
static int take_request(char *buf, size_t size)
{
    for (;;) {
        xg_xs_tx_t tx;
        int rc = xg_xs_transaction_start(&tx);

        if (rc < 0)
            return rc;
        rc = xg_xs_read(tx, "control/shutdown", buf, size);
        if (rc > 0)
            rc = xg_xs_write(tx, "control/shutdown", "");
        if (rc < 0) {
            xg_xs_transaction_end(tx, 1);
            return rc;
        }
        rc = xg_xs_transaction_end(tx, 0);
        if (rc != -XEN_EAGAIN)
            return rc;
    }
}

int main(void)
{
    char path[128], token[32], req[32];
    unsigned int i;
    int rc;

    rc = xg_events_init();
    if (rc == 0)
        rc = xg_xenbus_init();
    if (rc == 0)
        rc = xg_xs_write(0, "control/feature-poweroff", "1");
    if (rc == 0)
        rc = xg_xs_write(0, "control/feature-reboot", "1");
    if (rc == 0)
        rc = xg_xs_watch("control/shutdown", "shutdown");
    if (rc < 0) {
        xg_printf("shutdown: FAIL (setting up the watch: %s)\n", xg_xs_errname(rc));
        return 1;
    }
    xg_printf("shutdown: ready\n");
    for (;;) {
        rc = xg_xs_read_watch(path, sizeof(path), token, sizeof(token), 0);
        if (rc < 0 || strcmp(token, "shutdown") != 0)
            continue;
        rc = take_request(req, sizeof(req));
        if (rc < 0) {
            xg_printf("shutdown: FAIL (reading control/shutdown: %s)\n", xg_xs_errname(rc));
            return 1;
        }
        if (req[0] == '\0')
            continue;
        for (i = 0; i < XG_ARRAY_SIZE(requests); i++)
            if (strcmp(req, requests[i].name) == 0)
                break;
        if (i == XG_ARRAY_SIZE(requests)) {
            xg_printf("shutdown: ignoring unknown request \"%s\"\n", req);
            continue;
        }
        xg_printf("shutdown: %s\n", req);
        xg_shutdown(requests[i].reason);
    }
}
