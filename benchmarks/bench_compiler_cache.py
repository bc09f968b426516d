"""Shared compiler cache across two "machines": a cold build that fills it, and a build elsewhere that only hits.

One run starts a real ``redis-server`` (Debian package) on 127.0.0.1 as the shared backend. Each round:
machine A (fresh ``JITKERNELS_CACHE``, fresh local compiler-cache folder, its own sccache server) runs
``jitkernels build --local <kernel>``, compiling everything into Redis; machine B (other cache folder,
other local folder, other process and server) builds the same kernel. Reported: both wall times (the
whole ``jitkernels build`` process, Python and torch start included), their ratio, and the compiler
cache's own counts (B must show hits only). Rounds use a fresh Redis each, so A is always cold.

Run::

    .venv/bin/python benchmarks/bench_compiler_cache.py --tool ccache --repeats 2 --json /tmp/cc.json
    .venv/bin/python benchmarks/bench_compiler_cache.py --tool sccache          # needs a stable build folder

Kernel: the bundled ``scaled-add`` CPU kernel by default (``--kernel PATH`` for another local source tree,
``--backend cuda`` with ``TORCH_CUDA_ARCH_LIST`` on a CUDA box).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from jitkernels.testing.sharedcache import RedisServer, build_on_machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=("ccache", "sccache"), default="ccache")
    parser.add_argument("--kernel", default=str(REPO_ROOT / "jitkernels" / "examples" / "kernels" / "scaled-add"))
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    rounds = []
    for index in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="jk-bench-cc-") as tmp, RedisServer() as redis:
            a = build_on_machine(args.tool, Path(tmp) / "a", redis.url, Path(args.kernel), args.backend)
            b = build_on_machine(args.tool, Path(tmp) / "b", redis.url, Path(args.kernel), args.backend)
        row = {"a_s": round(a.seconds, 2), "b_s": round(b.seconds, 2), "ratio_a_over_b": round(a.seconds / b.seconds, 2),
               "a": {"requests": a.requests, "hits": a.hits, "misses": a.misses},
               "b": {"requests": b.requests, "hits": b.hits, "misses": b.misses}}
        rounds.append(row)
        print(f"round {index + 1}: machine A {a.seconds:.1f}s ({a.misses} compiled), machine B {b.seconds:.1f}s "
              f"({b.hits}/{b.requests} hits, {b.misses} compiled): A/B = {a.seconds / b.seconds:.1f}x")
    result = {
        "tool": args.tool, "kernel": Path(args.kernel).name, "backend": args.backend, "rounds": rounds,
        "median_a_s": statistics.median(r["a_s"] for r in rounds),
        "median_b_s": statistics.median(r["b_s"] for r in rounds),
        "median_ratio": statistics.median(r["ratio_a_over_b"] for r in rounds),
        "b_all_hits": all(r["b"]["misses"] == 0 and r["b"]["hits"] == r["b"]["requests"] > 0 for r in rounds),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["b_all_hits"] else 1


if __name__ == "__main__":
    sys.exit(main())
