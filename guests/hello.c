/*
 * hello - the smallest useful PV guest: proves the boot contract (notes,
 * start_info in %esi/%rsi, hypercall page, shared_info mapping, M2P lookup
 * of the console ring) and both console paths.
 *
 * Expected last console line: "hello: PASS".
 */
#include "xg.h"

int main(void)
{
    const start_info_t *si = xg_start_info;
    char magic[sizeof(si->magic) + 1];
    long ver, rc;

    memcpy(magic, si->magic, sizeof(si->magic));
    magic[sizeof(si->magic)] = '\0';

    xg_printf("Hello from xenpy-test (%s)\n", magic);
    xg_printf("cmdline: %s\n", (const char *)si->cmd_line);
    xg_printf("nr_pages: %lu\n", si->nr_pages);
    ver = HYPERVISOR_xen_version(XENVER_version, NULL);
    xg_printf("xen_version: %lu.%lu\n", (unsigned long)ver >> 16,
              (unsigned long)ver & 0xffff);

    rc = xg_console_io_write("hello: console_io works\n");
    xg_printf("hello: console_io returned %ld\n", rc);

    if (strncmp(magic, "xen-3.0-x86", 11) != 0) {
        xg_printf("hello: FAIL (start_info magic \"%s\" lacks \"xen-3.0-x86\")\n", magic);
        return 1;
    }
    xg_printf("hello: PASS\n");
    return 0;
}
