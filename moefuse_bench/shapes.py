"""The named MoE shapes and the parsing of custom ones (`H,I,E,k` or `HxIxExk`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """One MoE expert layer: hidden size H, expert intermediate size I, E experts, top-k."""

    name: str
    H: int
    I: int  # noqa: E741 - the usual name of the expert intermediate size
    E: int
    k: int

    def flops(self, tokens: int) -> float:
        """FLOPs of a forward over `tokens` tokens: GEMM1 (2I outputs) plus GEMM2."""
        return 2.0 * tokens * self.k * self.H * 2 * self.I + 2.0 * tokens * self.k * self.I * self.H


SHAPES = {
    s.name: s
    for s in (
        Shape("mixtral", 4096, 14336, 8, 2),
        Shape("deepseek", 7168, 2048, 256, 8),
        Shape("qwen3", 2048, 768, 128, 8),
    )
}
NAMES_HELP = f"{', '.join(SHAPES)}, all, H,I,E,k or HxIxExk"


def custom_shape(dims: Sequence[int]) -> Shape:
    """A shape of four integers H, I, E, k, named after them."""
    if len(dims) != 4:
        raise ValueError(f"custom shape needs 4 integers H,I,E,k, got {list(dims)}")
    h, n_i, e, k = dims
    if not 1 <= k <= e or min(dims) < 1:
        raise ValueError(f"custom shape {h},{n_i},{e},{k}: need positive and k <= E")
    return Shape(f"H{h}-I{n_i}-E{e}-k{k}", h, n_i, e, k)


def parse_shape(text: str) -> Shape:
    """One shape: a name, `H,I,E,k` or `HxIxExk`."""
    key = text.strip().lower()
    if key in SHAPES:
        return SHAPES[key]
    parts = re.split(r"[,x]", key)
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"unknown shape {text!r} (names: {NAMES_HELP})")
    return custom_shape([int(p) for p in parts])


def parse_shapes(values: Iterable[str]) -> list[Shape]:
    """Names (and `all`), `HxIxExk`, and `H,I,E,k` (four consecutive integers), comma-separated
    or repeated: `--shape mixtral,4096,1024,8,2 --shape 2048x768x128x8`."""
    shapes, nums = [], []
    for p in (p.strip().lower() for v in values for p in v.split(",") if p.strip()):
        if p.isdigit():
            nums.append(int(p))
            if len(nums) == 4:
                shapes.append(custom_shape(nums))
                nums = []
        elif nums:
            break  # a name inside a custom shape: reported below
        elif p == "all":
            shapes += SHAPES.values()
        else:
            shapes.append(parse_shape(p))
    if nums:
        raise ValueError(f"custom shape needs 4 integers H,I,E,k, got {nums}")
    return shapes


def parse_tokens(text: str) -> list[int]:
    """Comma-separated positive token counts."""
    tokens = [int(t) for t in text.split(",") if t.strip()]
    if not tokens or min(tokens) < 1:
        raise ValueError(f"token counts must be positive integers, got {text!r}")
    return tokens


def tool_parser(doc: str, shape: str, tokens: int) -> argparse.ArgumentParser:
    """A tool's command line with its one-line description and the --shape and --tokens of one case."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=shape, help=NAMES_HELP)
    parser.add_argument("--tokens", type=int, default=tokens)
    return parser
