/*
 * string.c - the few libc string routines the guests use.  gcc may also
 * emit calls to memset/memcpy on its own, so these keep their libc names.
 */
#include "xg.h"

void *memset(void *s, int c, size_t n)
{
    unsigned char *p = s;
    while (n--)
        *p++ = (unsigned char)c;
    return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            break;
    }
    return 0;
}

int strcmp(const char *a, const char *b)
{
    return strncmp(a, b, (size_t)-1);
}

unsigned long xg_cmdline_ulong(const char *key, unsigned long def)
{
    const char *p = (const char *)xg_start_info->cmd_line;
    const char *end = p + MAX_GUEST_CMDLINE;
    size_t klen = strlen(key);

    while (p < end && *p) {
        while (p < end && *p == ' ')
            p++;
        if (end - p > (long)klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            const char *q = p + klen + 1;
            unsigned long v = 0;
            int digits = 0;
            while (q < end && *q >= '0' && *q <= '9') {
                v = v * 10 + (unsigned long)(*q - '0');
                q++;
                digits++;
            }
            if (digits && (q == end || *q == ' ' || *q == '\0'))
                return v;
            return def;
        }
        while (p < end && *p && *p != ' ')
            p++;
    }
    return def;
}
