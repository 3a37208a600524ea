"""What the bad-data checks cost per request: BERT-base's token ids against its vocabulary at
intake, and a stage output against its compiled spec.

The model is the zoo's BERT-base (seq 128, random weights); the compiler's analysis
(`corepipe.compiler.checks.unchecked`) finds the checks a compiled plan would hold, and the checker
the pipelines build from them runs on one request's arrays, as `submit` does, next to the
signature check every request already paid (`check_feeds`); the output check is
`tensor_problem` on a [1, seq, 768] hidden state, as a stage runs it on each output it writes
by copy (outputs bound in place need none). Timings are the median of
``--repeats`` runs of ``--loops`` calls each.

    python benchmarks/intake_checks.py
    python benchmarks/intake_checks.py --seq 512 --loops 20000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def _per_call(fn: Callable[[], Any], loops: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--loops", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import numpy as np

    from corepipe import zoo
    from corepipe.artifact.plan import TensorSpec
    from corepipe.artifact.signature import check_feeds, tensor_problem
    from corepipe.artifact.valuechecks import ValueChecker
    from corepipe.compiler.checks.unchecked import find_unchecked
    from corepipe.compiler.model.graph import analyze

    model, feeds = zoo.get("bert", seq=args.seq)
    graph = analyze(model, feeds)
    del model
    checks = find_unchecked(graph).checks
    checker = ValueChecker(checks)
    specs = graph.inputs
    checked = check_feeds(specs, feeds)
    signature = _per_call(lambda: check_feeds(specs, feeds), args.loops, args.repeats)
    values = _per_call(lambda: checker(checked), args.loops, args.repeats)
    # The same pass with every value at the edge of the range: no shortcut on easy data.
    edge = dict(checked)
    edge[checks[0].input] = np.full_like(checked[checks[0].input], checks[0].hi[0])
    at_edge = _per_call(lambda: checker(edge), args.loops, args.repeats)
    print(f"BERT-base, seq {args.seq}: checks {[f'{c.input} in {c.lo[0]}..{c.hi[0]} ({c.node})' for c in checks]}")
    print("| per request | microseconds |")
    print("|---|---|")
    print(f"| signature check (names, dtypes, shapes; what every request paid before) | {signature * 1e6:.2f} |")
    print(f"| value checks (token ids within the vocabulary) | {values * 1e6:.2f} |")
    print(f"| value checks, every id at the top of the range | {at_edge * 1e6:.2f} |")
    hidden = TensorSpec("hidden", "float32", (1, args.seq, 768))
    array = np.zeros(hidden.shape, np.float32)
    output = _per_call(lambda: tensor_problem(hidden, array), args.loops, args.repeats)
    print(f"| output check, one stage output (dtype, shape) | {output * 1e6:.2f} |")
    print(f"| ratio value / signature | {values / signature:.3f} |")


if __name__ == "__main__":
    main()
