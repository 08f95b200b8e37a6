"""Values at probes without BPF: types read from small compiled programs, locations from
hand-made DWARF expressions, plans and printing (`symbolizer.var_types`, `var_fetch`,
`ubt.var_plan`, `ubt.values`)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bpf_progs.fetch_gen import generate
from symbolizer.dwarf_attrs import AT_NAME, AT_TYPE, DieReader
from symbolizer.dwarf_locations import Location, LocationEntry
from symbolizer.dwarf_scopes import Variable
from symbolizer.dwarf_sections import LOCATION_SECTIONS, load_sections
from symbolizer.dwarf_types import TypeNamer
from symbolizer.dwarf_units import DwarfFile
from symbolizer.var_fetch import Fetch, PcContext, Unavailable, locate
from symbolizer.var_types import CType, TypeReader
from ubt.errors import UbtError
from ubt.values import format_value, shape_of
from ubt.var_plan import ProbePlan, plan_probe, values_at
from unwind.memory import StackBytes

TAG_VARIABLE = 0x34


def _compile(tmp_path: Path, source: str, suffix: str, *flags: str) -> str:
    compiler = "g++" if suffix == ".cc" else "gcc"
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    src = tmp_path / ("prog" + suffix)
    src.write_text(source)
    out = tmp_path / "prog"           # linked: an object file's DWARF has relocations left
    subprocess.run([compiler, "-g", *flags, "-o", str(out), str(src)], check=True)
    return str(out)


def _globals(path: str) -> tuple[TypeReader, dict[str, CType]]:
    """The types of the global variables of an object file, by name."""
    dfile = DwarfFile(load_sections(path, LOCATION_SECTIONS))
    reader = DieReader(dfile)
    types = TypeReader(reader, TypeNamer(reader))
    out = {}
    for unit in dfile.units:
        for die in reader.children(reader.die(dfile, unit.die_offset)):
            name = die.str_attr(AT_NAME)
            if die.tag == TAG_VARIABLE and name:
                out[name] = types.of(reader.ref(die, AT_TYPE))
    return types, out


ENUMS = """
#include <stdint.h>
typedef int32_t myint;
enum class E : int32_t { NEG = -1, ONE = 1 };
enum class F : myint { FNEG = -2, FONE = 1 };
enum class U : uint32_t { BIG = 0xffffffff };
E e = E::NEG; F f = F::FNEG; U u = U::BIG;
int main() { return 0; }
"""


@pytest.mark.parametrize("flags", [(), ("-gdwarf-4", "-gstrict-dwarf")],
                         ids=["encoding", "typedef-underlying"])
def test_enum_signedness(tmp_path: Path, flags: tuple[str, ...]) -> None:
    types, found = _globals(_compile(tmp_path, ENUMS, ".cc", *flags))
    text = {n: format_value(shape_of(types, t), b) for (n, t), b in
            zip(sorted(found.items()), [b"\xff\xff\xff\xff", b"\xfe\xff\xff\xff",
                                        b"\xff\xff\xff\xff"])}
    assert text == {"e": "NEG", "f": "FNEG", "u": "BIG"}
    assert found["e"].signed and found["f"].signed and not found["u"].signed
    assert format_value(shape_of(types, found["e"]), b"\xfe\xff\xff\xff") == "-2"


def test_enum_without_type_signed_by_its_enumerators(tmp_path: Path) -> None:
    src = "enum G { GNEG = -3, GONE = 1 };\nenum G g = GNEG;\nenum H { H1 = 1 } h;\n"
    src += "int main(void) { return 0; }\n"
    types, found = _globals(_compile(tmp_path, src, ".c", "-gdwarf-2", "-gstrict-dwarf"))
    assert found["g"].signed and not found["h"].signed
    assert format_value(shape_of(types, found["g"]), b"\xfd\xff\xff\xff") == "GNEG"
    assert format_value(shape_of(types, found["g"]), b"\xfc\xff\xff\xff") == "-4"


CTX = PcContext(frame_base=bytes([0x9C]), cfa=(7, 8), at_entry=False)


@pytest.mark.parametrize("hexexpr", [
    "50 93 04 F5 00 93",                # GNU_regval_type's operand 0x93 is not a piece
    "50 93 04 A5 00 93",                # regval_type
    "50 93 04 A8 93 93 04",             # convert
    "50 93 04 A4 93 02 93 04",          # const_type: ULEB, a length byte, that many bytes
    "50 93 04 F4 93 02 93 04",
    "50 93 04 A6 93 93",                # deref_type: a byte, then a ULEB
    "50 93 04 A1 93 93 04",             # addrx
    "50 93 04 A2 93",                   # constx
    "50 93 04 98 93 00",                # call2
    "50 93 04 99 93 00 00 00",          # call4
    "50 93 04 FA 93 00 00 00",          # GNU_parameter_ref
    "50 93 04 9A 93 00 00 00",          # call_ref: operand size unknown here
    "50 93 04 F1 00 93",                # GNU_encoded_addr: not decoded
    "50 93 04 07 93 04",                # reserved opcode
    "50 93",                            # piece without its size
    "91",                               # fbreg without its offset
    "9E 08 01",                         # implicit_value shorter than its length
    "70 80 80",                         # breg0 with a LEB running past the end
])
def test_location_with_unknown_or_cut_operands_is_unavailable(hexexpr: str) -> None:
    expr = bytes.fromhex(hexexpr)
    try:
        loc = locate(expr, 8, CTX)
    except Unavailable:
        return
    # Pieces found at op boundaries only: the op after a piece is never taken for a piece.
    assert [n for n, _ in loc.pieces] != [4, 4], hexexpr


def test_pieces_after_operations_with_operands_still_split() -> None:
    loc = locate(bytes.fromhex("70 93 01 93 04 51 93 04"), 8, CTX)   # breg0 147; reg1
    assert [n for n, _ in loc.pieces] == [4, 4]
    src = loc.pieces[0][1]
    assert isinstance(src, Fetch) and src.address.base == 0 and src.address.offset == 147
    only = locate(bytes.fromhex("A1 93 01 93 04"), 4, CTX)     # an addrx piece: ?
    assert only.pieces == ((4, None),)


PLAN_SRC = """
struct pt { int x; int y; };
double d; long l; void *vp; const char *s; struct pt p; struct pt *pp;
int main(void) { return 0; }
"""


def _plan(tmp_path: Path, words: list[str], where: dict[str, str]) -> ProbePlan:
    """A plan for `words` with the globals of `PLAN_SRC` located by `where` (name → hex
    expression)."""
    types, found = _globals(_compile(tmp_path, PLAN_SRC, ".c"))
    in_scope = [(Variable(name, found[name].name, True,
                          Location((LocationEntry(0, 1 << 63, bytes.fromhex(expr)),), False),
                          None, i), found[name])
                for i, (name, expr) in enumerate(where.items())]
    return plan_probe("p", words, in_scope, set(range(len(where))), 0x1000, CTX, types)


def test_values_in_vector_registers_are_unavailable(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["$$vars"], {"d": "61", "l": "50", "p": "50 93 04 62 93 04"})
    generate([(0x1000, plan.fetches)])      # no FetchError: xmm0/xmm1 are not fetched
    errors = {item.label: item.error for item in plan.items}
    assert errors["d"] is not None and errors["l"] is None and errors["p"] is None
    assert plan.items[2].parts[1] == (4, None)      # p.y in xmm1: ?, p.x still read
    values = dict(values_at(plan, bytes(plan.layout.size), {}, StackBytes(0, b"")))
    assert values["d"] == "?"
    with pytest.raises(Unavailable):
        locate(b"\x50", 16, CTX)            # 16 bytes in one register: not a VALUE fetch
    with pytest.raises(Unavailable):
        locate(bytes.fromhex("90 11"), 8, CTX)              # regx 17


@pytest.mark.parametrize("word, message", [
    ("$vp[2]", "$vp[2]: cannot index void*: its elements have no known size (void)"),
    ("$vp->x", "$vp->x: -> on void*, a pointer to void"),
])
def test_void_pointer_access_is_refused(tmp_path: Path, word: str, message: str) -> None:
    with pytest.raises(UbtError) as err:
        _plan(tmp_path, [word], {"vp": "50"})
    assert str(err.value) == message


def test_vla_bound_by_reference_is_unknown(tmp_path: Path) -> None:
    """gcc -O1 gives an inlined VLA's DW_AT_upper_bound as a reference to the variable
    holding it: its DIE offset is not the length."""
    src = ("static inline int f(int n) { volatile int a[n]; a[0] = n; return a[0]; }\n"
           "int g(int n) { return f(n); }\nint main(int c, char **v) { return g(c); }\n")
    path = _compile(tmp_path, src, ".c", "-O1")
    dfile = DwarfFile(load_sections(path, LOCATION_SECTIONS))
    reader = DieReader(dfile)
    types = TypeReader(reader, TypeNamer(reader))
    arrays, refs = [], 0
    todo = [reader.die(dfile, u.die_offset) for u in dfile.units]
    while todo:
        die = todo.pop()
        kids = reader.children(die)
        todo.extend(kids)
        if die.tag == 0x01:                                 # DW_TAG_array_type
            arrays.append(types.of(die))
            refs += sum(reader.is_reference(k, 0x2F) for k in kids)
    if not refs:
        pytest.skip("this gcc gives no VLA bound by reference")
    assert arrays and all(t.count is None and t.dims == (None,) for t in arrays), arrays


@pytest.mark.parametrize("length, printed", [
    (127, '"' + "a" * 127 + '"'), (128, '"' + "a" * 128 + '"'),
    (129, '"' + "a" * 128 + '"...'), (500, '"' + "a" * 128 + '"...'),
])
def test_long_string_is_marked_cut(tmp_path: Path, length: int, printed: str) -> None:
    plan = _plan(tmp_path, ["$s"], {"s": "50"})
    string = plan.items[0].string
    assert string is not None
    area = bytearray(plan.layout.size)
    area[:len(plan.fetches)] = b"\1" * len(plan.fetches)
    value, at = plan.layout.offsets[0], plan.layout.offsets[string]
    area[value:value + 8] = (0x1000).to_bytes(8, "little")
    size = plan.fetches[string].size               # what bpf_probe_read_user_str leaves
    area[at:at + size] = (b"a" * length)[:size - 1].ljust(size, b"\0")
    assert values_at(plan, bytes(area), {}, StackBytes(0, b"")) == [("s", printed)]
