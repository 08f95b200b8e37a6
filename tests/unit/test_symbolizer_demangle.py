"""symbolizer.demangle: C++ against c++filt / llvm-cxxfilt, Rust legacy and v0 by example."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from symbolizer.demangle import demangle, demangle_rust_legacy, demangle_rust_v0

LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"


def _filter(tool: str, names: list[str]) -> list[str]:
    return subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.skipif(not os.path.exists(LIBSTDCXX) or shutil.which("c++filt") is None,
                    reason="libstdc++ or c++filt missing")
def test_cxx_matches_cxxfilt_on_libstdcxx_dynsym() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", LIBSTDCXX], capture_output=True,
                         text=True, check=True).stdout
    names = sorted({line.split()[-1].split("@")[0] for line in out.splitlines()
                    if line.split()[-1].startswith("_Z")})
    names = names[:: max(1, len(names) // 600)]
    assert len(names) >= 300
    gnu = _filter("c++filt", names)
    llvm = _filter("llvm-cxxfilt", names) if shutil.which("llvm-cxxfilt") else gnu
    # c++filt spells std::string in full (DMGL_VERBOSE), llvm-cxxfilt and __cxa_demangle do not
    mismatched = [(n, g, ours) for n, g, l, ours in zip(names, gnu, llvm, map(demangle, names))
                  if ours not in (g, l)]
    assert len(mismatched) <= len(names) // 100, mismatched[:10]


@pytest.mark.parametrize("mangled,expected", [
    ("_ZN9__gnu_cxx18stdio_sync_filebufIcSt11char_traitsIcEE6xsputnEPKcl",
     "__gnu_cxx::stdio_sync_filebuf<char, std::char_traits<char> >::xsputn(char const*, long)"),
    ("_Z3fooi.constprop.0", "foo(int) [clone .constprop.0]"),
    ("_ZN2fx6Widget4pokeEv", "fx::Widget::poke()"),
    ("_Znot_valid", "_Znot_valid"),
    ("main", "main"),
    ("read", "read"),
])
def test_cxx_examples(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected


@pytest.mark.parametrize("mangled,expected", [
    ("_ZN3std2io5stdio6_print17h1234567890abcdefE", "std::io::stdio::_print"),
    ("_ZN4core3ptr85drop_in_place$LT$std..rt..lang_start$LT$$LP$$RP$$GT$..$u7b$$u7b$closure"
     "$u7d$$u7d$$GT$17h0123456789abcdefE",
     "core::ptr::drop_in_place<std::rt::lang_start<()>::{{closure}}>"),
    ("_ZN71_$LT$Test$u20$$u2b$$u20$$u27$static$u20$as$u20$foo..Bar$LT$Test$GT$$GT$3bar"
     "17h930b740aa94f1d3aE", "<Test + 'static as foo::Bar<Test>>::bar"),
    ("_ZN5alloc7raw_vec11finish_grow17h0123456789abcdefE.llvm.123456",
     "alloc::raw_vec::finish_grow"),
])
def test_rust_legacy(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected


def test_rust_legacy_needs_the_hash() -> None:
    assert demangle_rust_legacy("_ZN3foo3barE") is None
    assert demangle("_ZN3foo3barE") == "foo::bar"  # plain C++ nested name


@pytest.mark.parametrize("mangled,expected", [
    ("_RNvCs1234_7mycrate3foo", "mycrate::foo"),
    ("_RNvNtCs1234_7mycrate3bar3foo", "mycrate::bar::foo"),
    ("_RINvNtC3std3mem8align_ofjEC3foo", "std::mem::align_of::<usize>"),
    ("_RNvMNtCs1234_5alloc3vecINtB2_3VecpE4push", "<alloc::vec::Vec<_>>::push"),
    ("_RNCNvCs1234_7mycrate4main0B3_", "mycrate::main::{closure#0}"),
    ("_RNvXCs1234_7mycrateNtB2_3FooNtNtC4core3fmt7Display3fmt",
     "<mycrate::Foo as core::fmt::Display>::fmt"),
    ("_RINvCs1234_7mycrate3fooTRShRL_ehEEB2_", "mycrate::foo::<(&[u8], &str, u8)>"),
    ("_RINvC1a1fINtC1a3ArrKj3_EE", "a::f::<a::Arr<3>>"),
    ("_RINvC1a1fFUKCEuEB2_", 'a::f::<unsafe extern "C" fn()>'),
    ("_RINvC1a1fDNtC1a5TraitEL_E", "a::f::<dyn a::Trait>"),
])
def test_rust_v0(mangled: str, expected: str) -> None:
    assert demangle(mangled) == expected


@pytest.mark.parametrize("mangled", ["_RNvC1a", "_RB0_", "_RNvCu4abcd_3foo", "_R0NvC1a1f"])
def test_rust_v0_unsupported_or_broken_is_returned_raw(mangled: str) -> None:
    assert demangle_rust_v0(mangled) is None
    assert demangle(mangled) == mangled
