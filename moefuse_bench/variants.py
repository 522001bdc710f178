"""The Hopper kernel choices the tools force, as `moefuse.override` arguments."""

from __future__ import annotations

import argparse
import contextlib
import re
from contextlib import AbstractContextManager
from typing import Any

from moefuse.overrides import FAMILIES  # row-major tiles; swapped operands, narrow or wide tiles

VARIANTS_HELP = "rows, swapped, wide, or the row-major M tile m64 / m128 with an optional BN: m128n128"


def add_family_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family", choices=("auto", *FAMILIES), default="auto", help="Hopper kernels (auto: the heuristics)"
    )


def family_override(family: str) -> dict[str, Any]:
    """`--family`'s override arguments (none for auto)."""
    return {} if family == "auto" else {"family": family}


def variant_override(variant: str) -> dict[str, Any]:
    """A variant's override arguments: a family (rows with the heuristics' tiles), or the
    row-major kernels with M tile 64 or 128 and, after `n`, a single BN."""
    if variant in FAMILIES:
        return {"family": variant}
    match = re.fullmatch(r"m(64|128)(?:n(\d+))?", variant)
    if not match:
        raise ValueError(f"unknown variant {variant!r} ({VARIANTS_HELP})")
    kwargs: dict[str, Any] = {"family": "rows", "tile_m": int(match[1])}
    if match[2]:
        kwargs["tile_n"] = int(match[2])
    return kwargs


def forced(**kwargs: Any) -> AbstractContextManager[object]:
    """`moefuse.override(**kwargs)`, or nothing at all where nothing is forced."""
    import moefuse

    return moefuse.override(**kwargs) if kwargs else contextlib.nullcontext()
