/*
 * printf.c - a small vsnprintf: %s %c %d %i %u %x %X %p %% with the l/ll/z
 * length modifiers, '#', '0', '-' flags and a field width.  Enough for
 * test output; no floating point.
 */
#include "xg.h"

struct outbuf {
    char *buf;
    size_t size;
    size_t len;         /* characters produced, even past size */
};

static void put(struct outbuf *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_num(struct outbuf *o, unsigned long long v, unsigned base,
                    int upper, int neg, int width, int zero, int left,
                    const char *prefix)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0, plen = (int)strlen(prefix) + (neg ? 1 : 0), pad, i;

    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    pad = width - n - plen;
    if (!left && !zero)
        for (; pad > 0; pad--)
            put(o, ' ');
    if (neg)
        put(o, '-');
    for (i = 0; prefix[i]; i++)
        put(o, prefix[i]);
    if (!left && zero)
        for (; pad > 0; pad--)
            put(o, '0');
    while (n)
        put(o, tmp[--n]);
    if (left)
        for (; pad > 0; pad--)
            put(o, ' ');
}

int xg_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct outbuf o = { buf, size, 0 };

    for (; *fmt; fmt++) {
        int zero = 0, left = 0, alt = 0, width = 0, lng = 0;

        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        for (fmt++;; fmt++) {
            if (*fmt == '0')
                zero = 1;
            else if (*fmt == '-')
                left = 1;
            else if (*fmt == '#')
                alt = 1;
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng += (*fmt == 'z') ? (sizeof(size_t) == 8 ? 2 : 1) : 1;
            fmt++;
        }

        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            int n;
            if (!s)
                s = "(null)";
            n = (int)strlen(s);
            if (!left)
                for (; width > n; width--)
                    put(&o, ' ');
            while (*s)
                put(&o, *s++);
            for (; width > n; width--)
                put(&o, ' ');
            break;
        }
        case 'c':
            put(&o, (char)va_arg(ap, int));
            break;
        case 'd':
        case 'i': {
            long long v = lng >= 2 ? va_arg(ap, long long)
                        : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
            unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v
                                         : (unsigned long long)v;
            put_num(&o, u, 10, 0, v < 0, width, zero, left, "");
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            unsigned long long v = lng >= 2 ? va_arg(ap, unsigned long long)
                                 : lng == 1 ? va_arg(ap, unsigned long)
                                 : va_arg(ap, unsigned int);
            if (*fmt == 'u')
                put_num(&o, v, 10, 0, 0, width, zero, left, "");
            else
                put_num(&o, v, 16, *fmt == 'X', 0, width, zero, left,
                        (alt && v) ? "0x" : "");
            break;
        }
        case 'p':
            put_num(&o, (unsigned long)va_arg(ap, void *), 16, 0, 0,
                    width, zero, left, "0x");
            break;
        case '%':
            put(&o, '%');
            break;
        case '\0':
            fmt--;
            break;
        default:
            put(&o, '%');
            put(&o, *fmt);
            break;
        }
    }
    if (o.size)
        o.buf[o.len < o.size ? o.len : o.size - 1] = '\0';
    return (int)o.len;
}

int xg_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = xg_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int xg_printf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = xg_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    xg_cons_write(buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    return n;
}
