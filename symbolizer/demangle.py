"""Linkage names to the names people read: C++ (Itanium ABI) and Rust (legacy and v0).

C++ goes through ``__cxa_demangle`` from libstdc++ (the same libiberty code as ``c++filt``),
called with ctypes. Rust is decoded here, printing what ``rustfilt`` prints (no hashes, no
crate disambiguators). Anything not understood comes back unchanged, so `demangle` never fails.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

_LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E")
_LLVM_SUFFIX = re.compile(r"\.llvm\.[0-9A-Za-z@]+$")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_LEGACY_ESCAPES = {"SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")",
                   "C": ","}


@functools.lru_cache(maxsize=1 << 16)
def demangle(name: str) -> str:
    """The demangled form of a C++ or Rust linkage name; other names unchanged."""
    if name.startswith("_R"):
        return demangle_rust_v0(name) or name
    if name.startswith("_ZN") or name.startswith("__ZN"):
        rust = demangle_rust_legacy(name)
        if rust is not None:
            return rust
    if name.startswith("_Z"):
        return _cxx().demangle(name) or name
    return name


@functools.lru_cache(maxsize=1 << 16)
def function_name(name: str) -> str:
    """The name of a function as gdb shows it in a backtrace: demangled, and for a C++ template
    function without the return type `c++filt` puts first (``int f<T>(T&)`` → ``f<T>(T&)``)."""
    text = demangle(name)
    return drop_return_type(text) if text is not name and name.startswith("_Z") else text


def drop_return_type(text: str) -> str:
    """``R ns::f<A>(B)`` → ``ns::f<A>(B)``: cut at the last space outside brackets before the
    parameter list. Spaces inside ``<>``/``()`` (``std::map<int, int>``) and in operator names
    (``operator new``, ``operator<<``) do not count."""
    depth = 0
    cut = -1
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith("operator", i) and (i == 0 or not (text[i - 1].isalnum()
                                                             or text[i - 1] == "_")):
            i = _skip_operator(text, i + len("operator"))
            continue
        if c in "<([":
            if c == "(" and depth == 0:
                break  # the parameter list of the function itself
            depth += 1
        elif c in ">)]":
            depth -= 1
        elif c == " " and depth == 0:
            cut = i
        i += 1
    return text[cut + 1:] if cut >= 0 else text


_OPERATORS = sorted(("<<=", ">>=", "->*", "<=>", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||",
                     "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "->", "()",
                     "[]", "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", "~", "!", "=", ","),
                    key=len, reverse=True)


def _skip_operator(text: str, i: int) -> int:
    """Index after an operator's own name: a symbol (``<<=``, ``()``), ``new[]``, or the type of
    a conversion operator (``operator unsigned long``)."""
    for op in _OPERATORS:
        if text.startswith(op, i):
            i += len(op)
            # `operator<< <int>`: the space before a template argument list is part of the name
            return i + 1 if text.startswith(" <", i) else i
    if text.startswith(" ", i):  # new, delete, a conversion's type, a literal suffix
        paren = text.find("(", i)
        return paren if paren >= 0 else len(text)
    return i


# -- C++ --------------------------------------------------------------------------------------

class _CxxDemangler:
    """``abi::__cxa_demangle`` from libstdc++.so.6; the result is malloc'ed and freed here."""

    def __init__(self) -> None:
        self._fn = None
        try:
            lib = ctypes.CDLL("libstdc++.so.6")
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            return
        fn = getattr(lib, "__cxa_demangle")
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_int)]
        self._free = libc.free
        self._free.argtypes = [ctypes.c_void_p]
        self._fn = fn

    def demangle(self, name: str) -> str | None:
        """The demangled name, or None when libstdc++ is missing or rejects the name."""
        if self._fn is None:
            return None
        status = ctypes.c_int(0)
        out = self._fn(name.encode(), None, None, ctypes.byref(status))
        if not out:
            return None
        try:
            text = ctypes.string_at(out)
        finally:
            self._free(out)
        return text.decode("utf-8", "replace") if status.value == 0 else None


@functools.cache
def _cxx() -> _CxxDemangler:
    return _CxxDemangler()


# -- Rust legacy ------------------------------------------------------------------------------

def demangle_rust_legacy(name: str) -> str | None:
    """``_ZN 3std 2io 5stdio 17h0123456789abcdefE`` → ``std::io::stdio``; None if not Rust.

    A Rust legacy name is an Itanium nested name whose last element is the 17-character hash.
    """
    name = _LLVM_SUFFIX.sub("", name)
    body = name[4:] if name.startswith("__ZN") else name[3:]
    parts: list[str] = []
    pos = 0
    while pos < len(body) and body[pos] != "E":
        digits = re.match(r"[0-9]+", body[pos:])
        if digits is None:
            return None
        length = int(digits.group())
        start = pos + len(digits.group())
        if length == 0 or start + length > len(body):
            return None
        parts.append(body[start:start + length])
        pos = start + length
    rest = body[pos:]
    if not parts or not (rest == "E" or rest.startswith("E.")):
        return None
    if not _LEGACY_HASH.fullmatch(f"{len(parts[-1])}{parts[-1]}E"):
        return None
    decoded = [_legacy_ident(p) for p in parts[:-1]]
    if any(d is None for d in decoded):
        return None
    return "::".join(d for d in decoded if d is not None) + rest[1:]


def _legacy_ident(ident: str) -> str | None:
    if ident.startswith("_$"):
        ident = ident[1:]
    out = []
    i = 0
    while i < len(ident):
        if ident.startswith("..", i):
            out.append("::")
            i += 2
        elif ident[i] == "$":
            end = ident.find("$", i + 1)
            if end < 0:
                return None
            code = ident[i + 1:end]
            if code in _LEGACY_ESCAPES:
                out.append(_LEGACY_ESCAPES[code])
            elif code.startswith("u") and re.fullmatch(r"[0-9a-f]+", code[1:]):
                out.append(chr(int(code[1:], 16)))
            else:
                return None
            i = end + 1
        else:
            out.append(ident[i])
            i += 1
    return "".join(out)


# -- Rust v0 ----------------------------------------------------------------------------------

def demangle_rust_v0(name: str) -> str | None:
    """A Rust v0 (``_R...``) name as rustfilt prints it, or None when it does not parse
    (punycode identifiers are among what is not supported)."""
    name = _LLVM_SUFFIX.sub("", name)
    body = name[2:]
    if body[:1].isdigit():  # encoding version: only 0 (written as nothing) exists
        return None
    try:
        parser = _V0(body)
        text = parser.path(value=True)
    except (_V0Error, IndexError, RecursionError):
        return None
    return text


class _V0Error(Exception):
    pass


_BASIC = {"a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8",
          "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128",
          "s": "i16", "t": "u16", "u": "()", "v": "...", "x": "i64", "y": "u64", "z": "!",
          "p": "_"}
_SIGNED = frozenset("ailnsx")


class _V0:
    """Recursive-descent printer for the v0 grammar (rustc's symbol-mangling/v0 document)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.pos = 0

    def peek(self) -> str:
        return self.s[self.pos] if self.pos < len(self.s) else ""

    def eat(self, c: str) -> bool:
        if self.peek() == c:
            self.pos += 1
            return True
        return False

    def next(self) -> str:
        c = self.s[self.pos]
        self.pos += 1
        return c

    def base62(self) -> int:
        if self.eat("_"):
            return 0
        value = 0
        while not self.eat("_"):
            c = self.next()
            digit = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".find(c)
            if digit < 0:
                raise _V0Error(c)
            value = value * 62 + digit
        return value + 1

    def opt_base62(self, tag: str) -> int:
        return self.base62() + 1 if self.eat(tag) else 0

    def decimal(self) -> int:
        m = _DECIMAL.match(self.s, self.pos)
        if m is None:
            raise _V0Error("decimal")
        self.pos = m.end()
        return int(m.group())

    def ident(self) -> tuple[int, str]:
        dis = self.opt_base62("s")
        if self.eat("u"):
            raise _V0Error("punycode")
        length = self.decimal()
        self.eat("_")
        text = self.s[self.pos:self.pos + length]
        if len(text) != length:
            raise _V0Error("ident")
        self.pos += length
        return dis, text

    def backref(self, parse: str, **kw: bool) -> str:
        start = self.pos - 1
        target = self.base62()
        if target >= start:
            raise _V0Error("forward backref")
        saved, self.pos = self.pos, target
        out: str = getattr(self, parse)(**kw)
        self.pos = saved
        return out

    def path(self, value: bool) -> str:
        tag = self.next()
        if tag == "C":
            return self.ident()[1]
        if tag == "N":
            ns = self.next()
            prefix = self.path(value)
            dis, text = self.ident()
            if ns.isupper():
                kind = {"C": "closure", "S": "shim"}.get(ns, ns)
                return f"{prefix}::{{{kind}{':' + text if text else ''}#{dis}}}"
            return f"{prefix}::{text}" if text else prefix
        if tag in "MXY":
            if tag != "Y":
                self.opt_base62("s")
                self.path(value=False)  # the impl's own path is not printed
            self_ty = self.type()
            if tag == "M":
                return f"<{self_ty}>"
            return f"<{self_ty} as {self.path(value=False)}>"
        if tag == "I":
            prefix = self.path(value)
            args = []
            while not self.eat("E"):
                args.append(self.generic_arg())
            return f"{prefix}{'::' if value else ''}<{', '.join(args)}>"
        if tag == "B":
            return self.backref("path", value=value)
        raise _V0Error(f"path tag {tag!r}")

    def generic_arg(self) -> str:
        if self.eat("L"):
            return self.lifetime(self.base62())
        if self.eat("K"):
            return self.const()
        return self.type()

    @staticmethod
    def lifetime(index: int) -> str:
        return "'_" if index == 0 else f"'{chr(ord('a') + (index - 1) % 26)}"

    def type(self) -> str:
        tag = self.next()
        if tag in _BASIC:
            return _BASIC[tag]
        if tag in "RQ":
            lt = self.lifetime(self.base62()) + " " if self.eat("L") else ""
            lt = "" if lt == "'_ " else lt
            return f"&{lt}{'mut ' if tag == 'Q' else ''}{self.type()}"
        if tag in "PO":
            return f"*{'const' if tag == 'P' else 'mut'} {self.type()}"
        if tag == "A":
            elem = self.type()
            return f"[{elem}; {self.const()}]"
        if tag == "S":
            return f"[{self.type()}]"
        if tag == "T":
            items = []
            while not self.eat("E"):
                items.append(self.type())
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        if tag == "F":
            return self.fn_sig()
        if tag == "D":
            return self.dyn_bounds()
        if tag == "B":
            return self.backref("type")
        self.pos -= 1
        return self.path(value=False)

    def fn_sig(self) -> str:
        if self.eat("G"):
            self.base62()
        prefix = "unsafe " if self.eat("U") else ""
        if self.eat("K"):
            abi = "C" if self.eat("C") else self.ident()[1].replace("_", "-")
            prefix += f'extern "{abi}" '
        params = []
        while not self.eat("E"):
            params.append(self.type())
        ret = self.type()
        return f"{prefix}fn({', '.join(params)})" + ("" if ret == "()" else f" -> {ret}")

    def dyn_bounds(self) -> str:
        if self.eat("G"):
            self.base62()
        traits = []
        while not self.eat("E"):
            trait = self.path(value=False)
            bindings = []
            while self.eat("p"):
                _, assoc = self.ident()
                bindings.append(f"{assoc} = {self.type()}")
            if bindings:
                trait = f"{trait[:-1]}, {', '.join(bindings)}>" if trait.endswith(">") \
                    else f"{trait}<{', '.join(bindings)}>"
            traits.append(trait)
        if self.eat("L"):
            self.base62()
        return "dyn " + " + ".join(traits)

    def const(self) -> str:
        if self.eat("p"):
            return "_"
        if self.eat("B"):
            return self.backref("const")
        ty = self.next()
        negative = self.eat("n")
        digits = self.s[self.pos:self.s.index("_", self.pos)]
        self.pos += len(digits) + 1
        value = int(digits or "0", 16)
        if ty == "b":
            return "true" if value else "false"
        if ty == "c":
            return repr(chr(value))
        if ty not in _BASIC or (negative and ty not in _SIGNED):
            raise _V0Error(f"const type {ty!r}")
        return f"-{value}" if negative else str(value)
