"""Kernel launch contracts, read from the cubins themselves (cuda_src/common/spec.cuh).

Beside every entry point NAME a module publishes three device constants: `NAME__moefuse_tags`
(what it computes: `op=gemm2_scatter elem=bf16 out=f32 ...`), `NAME__moefuse_ints` (the numbers
its launch needs: threads, smem_bytes, tile sizes, TMA box rows ...) and `NAME__moefuse_params`
(its parameter list as written). They sit in the cubin's ELF symbol table with their initial
bytes, so the host reads them with no GPU, in CI too. Arguments are then passed by name and
packed in the order and C types the kernel declares; a name missing or unknown fails loudly.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

NULL = np.uint64(0)
_SUFFIXES = ("__moefuse_tags", "__moefuse_ints", "__moefuse_params")
_INT_RECORD = struct.Struct("<24sq")  # SpecInt: char key[24]; long long value
_STT_FUNC = 2

# C parameter types -> how a Python value becomes a kernel argument
_CONVERTERS = {
    "ptr": lambda v: NULL if v is None else v,
    "tma": lambda v: v,  # a 128-byte np.void from moefuse._tma
    "i32": np.int32,
    "i64": np.int64,
    "f32": np.float32,
}
_SCALAR_KINDS = {"int": "i32", "i32": "i32", "i64": "i64", "float": "f32"}


class SpecError(RuntimeError):
    """A kernel's published contract is missing, malformed, or disagrees with its launch."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # ptr, tma, i32, i64 or f32


def parse_params(text: str) -> tuple[Param, ...]:
    """`(const Bf16* __restrict__ x, const __grid_constant__ TmaDesc d, int K)` -> Params."""
    params = []
    for declaration in text.strip().strip("()").split(","):
        words = re.findall(r"[A-Za-z_]\w*|\*", declaration)
        if len(words) < 2:
            raise SpecError(f"cannot read the parameter {declaration!r} of {text!r}")
        if "*" in words:
            kind = "ptr"
        elif "TmaDesc" in words:
            kind = "tma"
        elif words[-2] in _SCALAR_KINDS:
            kind = _SCALAR_KINDS[words[-2]]
        else:
            raise SpecError(f"parameter {declaration.strip()!r}: no host conversion for its type")
        params.append(Param(words[-1], kind))
    return tuple(params)


@dataclass(frozen=True, eq=False)  # one object per kernel and source: hashed by identity
class KernelSpec:
    """One entry point's contract: `spec["tile_m"]` reads a published number."""

    module: str
    source: str  # the module's source file the cubin was built from
    name: str
    tags: Mapping[str, str]
    ints: Mapping[str, int]
    params: tuple[Param, ...]
    _names: frozenset = field(init=False, repr=False)
    _packers: tuple = field(init=False, repr=False)  # (name, conversion) in declared order

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(p.name for p in self.params))
        object.__setattr__(self, "_packers", tuple((p.name, _CONVERTERS[p.kind]) for p in self.params))

    def __getitem__(self, key: str) -> int:
        try:
            return self.ints[key]
        except KeyError:
            raise SpecError(f"kernel {self.name} publishes no {key!r} (it has {sorted(self.ints)})") from None

    @property
    def threads(self) -> int:
        return self.ints["threads"]

    @property
    def smem_bytes(self) -> int:
        return self.ints.get("smem_bytes", 0)

    def matches(self, tags: Mapping[str, object]) -> bool:
        """Whether every given tag (a published string tag or number) has the given value."""
        return all(str(self.tags.get(k, self.ints.get(k))) == str(v) for k, v in tags.items())

    def check_names(self, names) -> None:
        if set(names) != self._names:
            missing, extra = sorted(self._names - set(names)), sorted(set(names) - self._names)
            raise SpecError(f"kernel {self.name}: arguments missing {missing}, unknown {extra}")

    def take(self, pool: Mapping[str, object]) -> dict:
        """The kernel's arguments out of `pool`, a larger set of named values."""
        try:
            return {p.name: pool[p.name] for p in self.params}
        except KeyError as missing:
            raise SpecError(f"kernel {self.name}: no value for its parameter {missing}") from None

    def pack(self, args: Mapping[str, object]) -> tuple:
        """The kernel's arguments in its declared order and C types."""
        if args.keys() != self._names:
            self.check_names(args.keys())
        return tuple([convert(args[name]) for name, convert in self._packers])


def _cstring(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode()


def _symbols(cubin: bytes) -> dict[str, tuple[int, bytes]]:
    """ELF64 symbol name -> (symbol type, initial bytes of the object it names)."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise SpecError("not a 64-bit ELF cubin")
    (shoff,) = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count, _ = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * entry_size) for i in range(count)]
    symtab = next(s for s in sections if s[1] == 2)  # SHT_SYMTAB
    strings = sections[symtab[6]][4]  # its sh_link: the string table's offset
    symbols = {}
    for i in range(symtab[5] // 24):
        name, info, _, section, value, size = struct.unpack_from("<IBBHQQ", cubin, symtab[4] + i * 24)
        data = b""
        if 0 < section < count and sections[section][1] != 8:  # not SHT_NOBITS
            start = sections[section][4] + value
            data = cubin[start : start + size]
        symbols[_cstring(cubin, strings + name)] = (info & 0xF, data)
    return symbols


def read_specs(cubin: bytes, module: str, source: str = "") -> dict[str, KernelSpec]:
    """Every published entry point of a cubin, by kernel name."""
    symbols = _symbols(cubin)
    specs = {}
    for symbol, (_, tags_data) in symbols.items():
        if not symbol.endswith(_SUFFIXES[0]):
            continue
        name = symbol[: -len(_SUFFIXES[0])]
        try:
            ints_data = symbols[name + _SUFFIXES[1]][1]
            params_data = symbols[name + _SUFFIXES[2]][1]
        except KeyError:
            raise SpecError(f"{module}: {name} publishes tags but not its ints and params") from None
        if symbols.get(name, (None,))[0] != _STT_FUNC:
            raise SpecError(f"{module}: a contract names {name}, which is no kernel of the module")
        ints = {}
        for key, value in _INT_RECORD.iter_unpack(ints_data):
            ints[key.rstrip(b"\0").decode()] = value
        tags = dict(word.split("=", 1) for word in _cstring(tags_data, 0).split())
        params = parse_params(_cstring(params_data, 0))
        specs[name] = KernelSpec(module, source, name, MappingProxyType(tags), MappingProxyType(ints), params)
    return specs
