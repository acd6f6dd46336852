/*
 * crash - announce, then SCHEDOP_shutdown(SHUTDOWN_crash) so the toolstack's
 * crash path can be tested.
 *
 * Expected last console line: "crash: about to crash".
 */
#include "xg.h"

int main(void)
{
    xg_printf("crash: about to crash\n");
    xg_crash();
}
