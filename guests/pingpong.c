/*
 * pingpong - two domains exchange n events over an interdomain event
 * channel, found through XenStore, and check the count.
 *
 * Run as two domains (cmdline):  role=ping n=<N>   and
 *                                role=pong peer=<ping's domid> n=<N>
 * The ping side does not need the pong side's domid in advance:
 * 1. ping creates data/pingpong-peer with perms "b<ping>" (we own it,
 *    anyone may write) and watches it;
 * 2. pong writes its domid there (retrying on each watch event of that
 *    node until ping has made it writable);
 * 3. ping allocates an unbound port for pong, publishes it in
 *    data/pingpong-port with perms "n<ping>" "r<pong>" (only pong may read);
 * 4. pong reads it (again driven by a watch), binds the interdomain
 *    channel, drops the event Xen raises on the binding end and sends one
 *    "ready" event;
 * 5. n rounds: ping sends, pong waits for the event and sends back, ping
 *    waits for the reply.  Events never coalesce because each side waits
 *    for the other before sending again.
 * Then ping checks EVTCHNOP_status (interdomain, to pong) and both check
 * their handler counts: ping saw n + 1 events, pong n.
 * Expected last line on both: "pingpong: PASS <n>".
 */
#include "xg.h"
#include "xg_events.h"
#include "xg_xenbus.h"

static volatile unsigned long received;

static void on_event(evtchn_port_t port, void *data)
{
    (void)port;
    (void)data;
    received++;
}

static int received_at_least(void *arg)
{
    return received >= *(const unsigned long *)arg;
}

static void wait_events(unsigned long count)
{
    xg_wait_until(received_at_least, &count, 0);
}

/* Copy the value of "key=<word>" from the command line; 0 if absent. */
static int cmdline_word(const char *key, char *buf, size_t size)
{
    const char *p = (const char *)xg_start_info->cmd_line;
    const char *end = p + MAX_GUEST_CMDLINE;
    size_t klen = strlen(key), n;

    while (p < end && *p) {
        while (p < end && *p == ' ')
            p++;
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            p += klen + 1;
            for (n = 0; p + n < end && p[n] && p[n] != ' ' && n + 1 < size; n++)
                buf[n] = p[n];
            buf[n] = '\0';
            return 1;
        }
        while (p < end && *p && *p != ' ')
            p++;
    }
    return 0;
}

static int fail(const char *what, int rc)
{
    xg_printf("pingpong: FAIL (%s: %d %s)\n", what, rc, xg_xs_errname(rc));
    return 1;
}

/* Wait until path holds a decimal number (reading it on each watch event). */
static int wait_for_number(const char *path, const char *token, unsigned long *out)
{
    char wpath[128], wtoken[32];
    int rc = xg_xs_watch(path, token);

    if (rc < 0)
        return rc;
    for (;;) {
        if (xg_xs_read_ulong(0, path, out) == 0)
            break;
        rc = xg_xs_read_watch(wpath, sizeof(wpath), wtoken, sizeof(wtoken), 0);
        if (rc < 0)
            return rc;
    }
    return xg_xs_unwatch(path, token);
}

static int ping(unsigned long self, unsigned long n)
{
    static const char peer_node[] = "data/pingpong-peer";
    char owner[24], reader[24];
    const char *perms[2] = { owner, reader };
    struct evtchn_status st;
    unsigned long peer, i;
    long port;
    int rc;

    rc = xg_xs_write(0, peer_node, "");
    if (rc < 0)
        return fail("creating data/pingpong-peer", rc);
    xg_snprintf(owner, sizeof(owner), "b%lu", self);
    rc = xg_xs_set_perms(0, peer_node, perms, 1);
    if (rc < 0)
        return fail("XS_SET_PERMS data/pingpong-peer", rc);
    rc = wait_for_number(peer_node, "pingpong-peer", &peer);
    if (rc < 0)
        return fail("waiting for the pong domain", rc);
    port = xg_evtchn_alloc_unbound((domid_t)peer, on_event, NULL);
    if (port < 0)
        return fail("EVTCHNOP_alloc_unbound", (int)port);
    xg_printf("pingpong: ping d%lu, pong is d%lu, port %ld\n", self, peer, port);
    rc = xg_xs_printf(0, "data/pingpong-port", "%ld", port);
    if (rc < 0)
        return fail("writing data/pingpong-port", rc);
    xg_snprintf(owner, sizeof(owner), "n%lu", self);
    xg_snprintf(reader, sizeof(reader), "r%lu", peer);
    rc = xg_xs_set_perms(0, "data/pingpong-port", perms, 2);
    if (rc < 0)
        return fail("XS_SET_PERMS data/pingpong-port", rc);

    wait_events(1);                                 /* pong is bound */
    for (i = 0; i < n; i++) {
        xg_notify((evtchn_port_t)port);
        wait_events(i + 2);
    }
    memset(&st, 0, sizeof(st));
    st.dom = DOMID_SELF;
    st.port = (evtchn_port_t)port;
    rc = (int)HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);
    if (rc < 0 || st.status != EVTCHNSTAT_interdomain || st.u.interdomain.dom != peer) {
        xg_printf("pingpong: FAIL (EVTCHNOP_status %d: status %u dom %u)\n", rc,
                  st.status, st.u.interdomain.dom);
        return 1;
    }
    if (received != n + 1) {
        xg_printf("pingpong: FAIL (received %lu events, expected %lu)\n", received, n + 1);
        return 1;
    }
    xg_evtchn_close((evtchn_port_t)port);
    xg_printf("pingpong: PASS %lu\n", n);
    return 0;
}

static int pong(unsigned long self, unsigned long peer, unsigned long n)
{
    char path[96];
    unsigned long rport, i;
    long port;
    int rc, flags;

    /* Tell ping who we are, once it has made its node writable for us. */
    xg_snprintf(path, sizeof(path), "/local/domain/%lu/data/pingpong-peer", peer);
    rc = xg_xs_watch(path, "pingpong-peer");
    if (rc < 0)
        return fail("XS_WATCH on ping's pingpong-peer", rc);
    for (;;) {
        char wpath[128], wtoken[32];
        if (xg_xs_printf(0, path, "%lu", self) == 0)
            break;
        rc = xg_xs_read_watch(wpath, sizeof(wpath), wtoken, sizeof(wtoken), 0);
        if (rc < 0)
            return fail("waiting for ping's pingpong-peer", rc);
    }
    xg_xs_unwatch(path, "pingpong-peer");

    xg_snprintf(path, sizeof(path), "/local/domain/%lu/data/pingpong-port", peer);
    rc = wait_for_number(path, "pingpong-port", &rport);
    if (rc < 0)
        return fail("waiting for ping's pingpong-port", rc);

    flags = xg_local_irq_save();
    port = xg_evtchn_bind_interdomain((domid_t)peer, (evtchn_port_t)rport, on_event, NULL);
    if (port >= 0) {
        xg_evtchn_clear_pending((evtchn_port_t)port);   /* Xen's bind notification */
        received = 0;
    }
    xg_local_irq_restore(flags);
    if (port < 0)
        return fail("EVTCHNOP_bind_interdomain", (int)port);
    xg_printf("pingpong: pong d%lu, ping is d%lu, remote port %lu, local port %ld\n",
              self, peer, rport, port);

    xg_notify((evtchn_port_t)port);                 /* ready */
    for (i = 0; i < n; i++) {
        wait_events(i + 1);
        xg_notify((evtchn_port_t)port);
    }
    if (received != n) {
        xg_printf("pingpong: FAIL (received %lu events, expected %lu)\n", received, n);
        return 1;
    }
    xg_printf("pingpong: PASS %lu\n", n);
    return 0;
}

int main(void)
{
    char role[16];
    unsigned long self = 0, n = xg_cmdline_ulong("n", 100);
    unsigned long peer = xg_cmdline_ulong("peer", ~0UL);
    int rc;

    if (!cmdline_word("role", role, sizeof(role)) ||
        (strcmp(role, "ping") != 0 && strcmp(role, "pong") != 0)) {
        xg_printf("pingpong: FAIL (cmdline needs role=ping or role=pong peer=<domid>)\n");
        return 1;
    }
    rc = xg_events_init();
    if (rc < 0)
        return fail("events init", rc);
    rc = xg_xenbus_init();
    if (rc < 0)
        return fail("xenbus init", rc);
    rc = xg_xs_domid(&self);
    if (rc < 0)
        return fail("reading domid", rc);
    xg_printf("pingpong: role=%s n=%lu\n", role, n);
    if (strcmp(role, "ping") == 0)
        return ping(self, n);
    if (peer == ~0UL) {
        xg_printf("pingpong: FAIL (role=pong needs peer=<ping's domid>)\n");
        return 1;
    }
    return pong(self, peer, n);
}
