"""Run a few forwards of one shape (for profilers: ncu --kernel-name ... python3 tools/forward_once.py).

python tools/forward_once.py [--shape mixtral|H,I,E,k|HxIxExk] [--tokens T] [--iters 2]
    [--unfused] [--skew] [--weights bf16|fp8] [--family auto|rows|swapped|wide]
"""

import cupy as cp

from moefuse_bench.problems import random_problem
from moefuse_bench.shapes import tool_parser
from moefuse_bench.variants import add_family_argument, family_override, forced


def main() -> None:
    parser = tool_parser(__doc__, "mixtral", 4096)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--unfused", action="store_true")
    parser.add_argument("--skew", action="store_true", help="bench.py's skewed routing")
    parser.add_argument("--weights", choices=("bf16", "fp8"), default="bf16", help="fp8: 128 x 128 blocks")
    add_family_argument(parser)
    args = parser.parse_args()
    layer, case = random_problem(args.shape, args.tokens, skew=args.skew, fp8=args.weights == "fp8")
    with forced(**family_override(args.family)):
        for _ in range(args.iters):
            layer(*case.sets[0], fused_finalize=not args.unfused)
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
