"""xl.cfg parsing: the libxlutil grammar (libxlu_cfg_l.l / libxlu_cfg_y.y) and
the part of xl_parse.c that turns settings into a PV domain's configuration.

The file is a sequence of ``key = value`` (or ``key += value``) statements
ended by a newline or ``;``.  A key is ``[a-z][_0-9a-z]*``; a value is a quoted
string (``"..."`` or ``'...'``, no raw newline, backslash escapes ``\\" \\'
\\\\ \\a \\b \\f \\n \\r \\t \\v``), a number token (``[0-9][0-9a-fx]*``, read
later with C ``strtol(s, 0)`` rules: ``0x`` hex, leading ``0`` octal), or a
list ``[ v, v, ]`` whose items are values, which may span lines and carry
comments.  ``#`` starts a comment to the end of the line.  ``+=`` appends to
the previous value of the same kind (string to string, list to list).  When a
key is set twice the last setting wins; xl ignores keys it does not know, so
they are kept, parsed, in `DomainConfig.extra`.

Where xl only warns and carries on with a default (a list where a number was
expected, a malformed number), xenpy stops with a `ConfigError` that names the
file, line and key, because silently booting a domain with 32 MiB instead of
the configured memory is worse than refusing.  Two deliberate differences from
libxlutil 4.17: a file need not end with a newline even when its last line is
a comment, and numeric escapes (``\\x41``, ``\\101``) are refused outright,
since libxlutil mis-parses them (hex escapes always fail, octal ones are
dropped).  Defaults follow xl and libxl: memory 32 MiB, maxmem = memory,
vcpus 1, on_poweroff destroy, on_reboot restart, on_crash destroy.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping, Union

from xenpy.errors import ConfigError

log = logging.getLogger(__name__)

#: libxl's default when neither memory nor maxmem is given (LIBXL_MEMKB_DEFAULT).
DEFAULT_MEMORY_MIB = 32
#: xl_parse.c parse_action_on_shutdown's vocabulary.
SHUTDOWN_ACTIONS = frozenset({
    "destroy", "restart", "rename-restart", "preserve",
    "coredump-destroy", "coredump-restart", "soft-reset",
})
_LONG_MAX = (1 << 63) - 1
_LONG_MIN = -(1 << 63)


@dataclass(frozen=True)
class DomainConfig:
    """What xl would build from one config file (PV domains only)."""

    name: str
    kernel: str
    memory: int            # MiB
    maxmem: int            # MiB
    vcpus: int
    cmdline: str
    ramdisk: str | None
    on_poweroff: str
    on_reboot: str
    on_crash: str
    disks: tuple[str, ...]
    vifs: tuple[str, ...]
    extra: Mapping[str, object]


# --------------------------------------------------------------------------
# Lexer (libxlu_cfg_l.l)


@dataclass(frozen=True)
class _Tok:
    kind: str          # IDENT NUMBER STRING NEWLINE EOF or the punctuation itself
    text: str
    line: int


_PUNCT = {",": ",", "[": "[", "]": "]", "=": "=", ";": ";"}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
            "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyz")
_IDENT_REST = _IDENT_START | frozenset("_0123456789")
_DIGITS = frozenset("0123456789")
_NUMBER_REST = _DIGITS | frozenset("abcdefx")


class _Lexer:
    """Turns config text into tokens, raising ConfigError at the first bad one."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1

    def error(self, line: int, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {msg}")

    def tokens(self) -> list[_Tok]:
        out = []
        while True:
            tok = self._next()
            out.append(tok)
            if tok.kind == "EOF":
                return out

    def _next(self) -> _Tok:
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] in " \t":
            self.pos += 1
        if self.pos >= n:
            return _Tok("EOF", "", self.line)
        start, c, line = self.pos, text[self.pos], self.line
        if c == "\n" or c == "#":
            end = text.find("\n", start)
            end = n if end < 0 else end
            self.pos = end + 1
            self.line += 1
            return _Tok("NEWLINE", text[start:end], line)
        if c in _IDENT_START:
            while self.pos < n and text[self.pos] in _IDENT_REST:
                self.pos += 1
            return _Tok("IDENT", text[start:self.pos], line)
        if c in _DIGITS:
            while self.pos < n and text[self.pos] in _NUMBER_REST:
                self.pos += 1
            return _Tok("NUMBER", text[start:self.pos], line)
        if c == "+" and text.startswith("+=", start):
            self.pos += 2
            return _Tok("+=", "+=", line)
        if c in _PUNCT:
            self.pos += 1
            return _Tok(_PUNCT[c], c, line)
        if c in "\"'":
            return self._string(c)
        word_end = start
        while word_end < n and text[word_end] not in " \t\n":
            word_end += 1
        word = text[start:word_end]
        if c == "\r":
            raise self.error(line, "carriage return in the file: convert DOS "
                                   "line endings (CRLF) to Unix ones (LF)")
        hint = ""
        if c in "+-.():":
            hint = (" (negative numbers and Python expressions are not "
                    "supported; quote strings with \" or ')")
        elif c.isalpha() or c == "_":
            hint = (" (keys are lower-case letters, digits and '_', starting "
                    "with a letter; string values need quotes)")
        raise self.error(line, f"lexical error near {word!r}{hint}")

    def _string(self, quote: str) -> _Tok:
        text, n, line = self.text, len(self.text), self.line
        start = self.pos
        i = start + 1
        out: list[str] = []
        while True:
            if i >= n or text[i] == "\n":
                raise self.error(line, f"unterminated string starting "
                                       f"{text[start:i][:40]!r}: add the closing {quote}")
            c = text[i]
            if c == quote:
                break
            if c == "\\":
                if i + 1 >= n or text[i + 1] == "\n":
                    raise self.error(line, "backslash at the end of a line inside a "
                                           "string: strings cannot span lines")
                e = text[i + 1]
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                elif e == "x" or e in "01234567":
                    raise self.error(line, f"numeric escape '\\{e}' in a string is not "
                                           "supported (xl mis-parses it): write the "
                                           "character itself")
                else:
                    raise self.error(line, f"invalid escape '\\{e}' in a string: use "
                                           "one of \\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v")
                i += 2
                continue
            if c == "\0":
                raise self.error(line, "NUL character inside a string")
            out.append(c)
            i += 1
        self.pos = i + 1
        return _Tok("STRING", "".join(out), line)


# --------------------------------------------------------------------------
# Parser (libxlu_cfg_y.y)


@dataclass(frozen=True)
class _Atom:
    text: str
    number: bool       # a NUMBER token, not a quoted string
    line: int


@dataclass(frozen=True)
class _List:
    items: tuple["_Value", ...]
    line: int


_Value = Union[_Atom, _List]


@dataclass(frozen=True)
class _Setting:
    value: _Value
    line: int
    added: bool        # produced by +=; xl refuses such values as numbers


def _describe(tok: _Tok) -> str:
    if tok.kind == "EOF":
        return "end of file"
    if tok.kind == "NEWLINE":
        return "end of line"
    return repr(tok.text if tok.kind != "STRING" else f'"{tok.text}"')


class _Parser:
    def __init__(self, tokens: list[_Tok], source: str) -> None:
        self.toks = tokens
        self.i = 0
        self.source = source
        self.settings: dict[str, _Setting] = {}

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def error(self, tok: _Tok, expected: str) -> ConfigError:
        return ConfigError(f"{self.source}:{tok.line}: syntax error near "
                           f"{_describe(tok)}: expected {expected}")

    def parse(self) -> dict[str, _Setting]:
        while True:
            tok = self.peek()
            if tok.kind == "EOF":
                return self.settings
            if tok.kind in ("NEWLINE", ";"):
                self.take()
                continue
            if tok.kind != "IDENT":
                raise self.error(tok, "a setting 'key = value'")
            self.assignment()
            end = self.peek()
            if end.kind in ("NEWLINE", ";"):
                self.take()
            elif end.kind != "EOF":
                raise self.error(end, "end of line or ';' after the value")

    def assignment(self) -> None:
        key = self.take()
        op = self.take()
        if op.kind not in ("=", "+="):
            raise self.error(op, f"'=' or '+=' after {key.text!r}")
        value = self.value()
        prev = self.settings.get(key.text)
        if op.kind == "+=" and prev is not None:
            value = self.concat(key, prev.value, value)
        self.settings[key.text] = _Setting(value, key.line, op.kind == "+=")

    def concat(self, key: _Tok, prev: _Value, add: _Value) -> _Value:
        if isinstance(prev, _Atom) and isinstance(add, _Atom):
            return _Atom(prev.text + add.text, False, add.line)
        if isinstance(prev, _List) and isinstance(add, _List):
            return _List(prev.items + add.items, add.line)
        raise ConfigError(f"{self.source}:{key.line}: {key.text}: can't add a "
                          "[list] to a \"string\" or vice versa with '+='")

    def skip_newlines(self) -> None:
        while self.peek().kind == "NEWLINE":
            self.take()

    def value(self) -> _Value:
        tok = self.take()
        if tok.kind in ("STRING", "NUMBER"):
            return _Atom(tok.text, tok.kind == "NUMBER", tok.line)
        if tok.kind != "[":
            raise self.error(tok, "a value: a \"string\", a number or a [list]")
        items: list[_Value] = []
        self.skip_newlines()
        if self.peek().kind == "]":
            self.take()
            return _List((), tok.line)
        while True:
            items.append(self.value())
            self.skip_newlines()
            sep = self.take()
            if sep.kind == "]":
                return _List(tuple(items), tok.line)
            if sep.kind != ",":
                raise self.error(sep, "',' or ']' in the list")
            self.skip_newlines()
            if self.peek().kind == "]":
                self.take()
                return _List(tuple(items), tok.line)


def parse_xl_settings(text: str, *, source: str = "<config>") -> dict[str, object]:
    """The raw settings of an xl config: str, int (number tokens) and tuples."""
    return {k: _plain(s.value) for k, s in _parse(text, source).items()}


def _parse(text: str, source: str) -> dict[str, _Setting]:
    if not text.endswith("\n"):
        text += "\n"
    return _Parser(_Lexer(text, source).tokens(), source).parse()


# --------------------------------------------------------------------------
# From settings to a DomainConfig (xl_parse.c parse_config_data)


_C_LONG = re.compile(
    r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")


def _c_long(text: str) -> int | None:
    """strtol(text, &end, 0) that must consume everything; None if it cannot."""
    m = _C_LONG.fullmatch(text)
    if m is None:
        return None
    sign, hex_digits, octal, decimal = m.groups()
    if hex_digits is not None:
        value = int(hex_digits, 16)
    elif octal is not None:
        value = int(octal, 8)
    else:
        value = int(decimal, 10)
    value = -value if sign == "-" else value
    if not _LONG_MIN <= value <= _LONG_MAX:
        return None
    return value


def _plain(value: _Value) -> object:
    if isinstance(value, _List):
        return tuple(_plain(v) for v in value.items)
    if value.number:
        number = _c_long(value.text)
        if number is not None:
            return number
    return value.text


class _Settings:
    """Typed getters over parsed settings; each error names file, line and key."""

    def __init__(self, settings: dict[str, _Setting], source: str) -> None:
        self.settings = settings
        self.source = source
        self.used: set[str] = set()

    def error(self, key: str, msg: str) -> ConfigError:
        setting = self.settings.get(key)
        where = f"{self.source}:{setting.line}" if setting else self.source
        return ConfigError(f"{where}: {key}: {msg}")

    def string(self, key: str) -> str | None:
        self.used.add(key)
        setting = self.settings.get(key)
        if setting is None:
            return None
        if not isinstance(setting.value, _Atom):
            raise self.error(key, "expected a single value, found a [list]")
        return setting.value.text

    def integer(self, key: str, what: str, minimum: int) -> int | None:
        text = self.string(key)
        if text is None:
            return None
        if self.settings[key].added:
            raise self.error(key, "'+=' cannot be used with numbers")
        value = _c_long(text)
        if value is None:
            raise self.error(key, f"expected {what} (decimal, or 0x hex), found {text!r}")
        if value < minimum:
            raise self.error(key, f"expected {what} of at least {minimum}, found {value}")
        return value

    def string_list(self, key: str, what: str) -> tuple[str, ...]:
        self.used.add(key)
        setting = self.settings.get(key)
        if setting is None:
            return ()
        if not isinstance(setting.value, _List):
            raise self.error(key, f"expected a list of {what} like "
                                  f"{key} = [ '...' ], found a single value")
        items = []
        for n, item in enumerate(setting.value.items):
            if not isinstance(item, _Atom):
                raise self.error(key, f"item {n}: expected a string, found a [list]")
            items.append(item.text)
        return tuple(items)

    def action(self, key: str, default: str) -> str:
        value = self.string(key)
        if value is None:
            return default
        if value not in SHUTDOWN_ACTIONS:
            raise self.error(key, f"unknown action {value!r}; expected one of "
                                  f"{', '.join(sorted(SHUTDOWN_ACTIONS))}")
        return value


def parse_xl_config(text: str, *, source: str = "<config>") -> DomainConfig:
    """Parse an xl.cfg text into a PV DomainConfig; ConfigError names file:line."""
    cfg = _Settings(_parse(text, source), source)

    name = cfg.string("name")
    if not name:
        raise cfg.error("name", "a domain name must be specified (name = \"...\")")
    guest_type = cfg.string("type")
    if guest_type is not None and guest_type != "pv":
        raise cfg.error("type", f"xenpy runs PV guests only; expected \"pv\", "
                                f"found {guest_type!r}")
    builder = cfg.string("builder")
    if builder is not None and builder not in ("generic", "linux"):
        raise cfg.error("builder", f"xenpy runs PV guests only; expected "
                                   f"\"generic\", found {builder!r}")
    kernel = cfg.string("kernel")
    if not kernel:
        raise cfg.error("kernel", "a PV kernel must be given (kernel = \"/path\"); "
                                  "bootloaders are not supported")

    memory = cfg.integer("memory", "a size in MiB", 1)
    maxmem = cfg.integer("maxmem", "a size in MiB", 1)
    if memory is None:
        memory = maxmem if maxmem is not None else DEFAULT_MEMORY_MIB
    if maxmem is None:
        maxmem = memory
    if maxmem < memory:
        raise cfg.error("maxmem", f"maxmem ({maxmem} MiB) must be at least "
                                  f"memory ({memory} MiB)")
    vcpus = cfg.integer("vcpus", "a vCPU count", 1)
    vcpus = 1 if vcpus is None else vcpus
    maxvcpus = cfg.integer("maxvcpus", "a vCPU count", 1)
    if maxvcpus is not None and maxvcpus < vcpus:
        raise cfg.error("maxvcpus", f"maxvcpus ({maxvcpus}) must be at least "
                                    f"vcpus ({vcpus})")

    cmdline = cfg.string("cmdline")
    root = cfg.string("root")
    extra_args = cfg.string("extra")
    if cmdline is None:
        if root is not None and extra_args is not None:
            cmdline = f"root={root} {extra_args}"
        elif root is not None:
            cmdline = f"root={root}"
        else:
            cmdline = extra_args or ""
    elif root is not None or extra_args is not None:
        log.warning("%s: ignoring root= and extra= in favour of cmdline=", source)

    ramdisk = cfg.string("ramdisk")
    result = DomainConfig(
        name=name,
        kernel=kernel,
        memory=memory,
        maxmem=maxmem,
        vcpus=vcpus,
        cmdline=cmdline,
        ramdisk=ramdisk or None,
        on_poweroff=cfg.action("on_poweroff", "destroy"),
        on_reboot=cfg.action("on_reboot", "restart"),
        on_crash=cfg.action("on_crash", "destroy"),
        disks=cfg.string_list("disk", "disk specs"),
        vifs=cfg.string_list("vif", "vif specs"),
        extra=MappingProxyType({}),
    )
    # type, builder and maxvcpus are checked above but have no field of their own.
    others = {k: _plain(s.value) for k, s in cfg.settings.items()
              if k not in cfg.used or k in ("type", "builder", "maxvcpus")}
    return replace(result, extra=MappingProxyType(others))


def load_xl_config(path: str | os.PathLike[str]) -> DomainConfig:
    """Read a config file; relative kernel/ramdisk paths resolve against its directory."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: not valid UTF-8 text") from None
    config = parse_xl_config(text, source=source)
    base = os.path.dirname(os.path.abspath(source))

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    return replace(config, kernel=resolve(config.kernel),
                   ramdisk=None if config.ramdisk is None else resolve(config.ramdisk))
