/*
 * echo - read one line from the PV console's input ring and print it back,
 * exercising in[]/in_cons/in_prod and waiting with SCHEDOP_poll.
 *
 * Expected console: "echo: ready", then after the host sends "abc\r",
 * "echo: abc" as the last line.
 */
#include "xg.h"

int main(void)
{
    char line[256];

    xg_printf("echo: ready\n");
    xg_cons_readline(line, sizeof(line));
    xg_printf("echo: %s\n", line);
    return 0;
}
