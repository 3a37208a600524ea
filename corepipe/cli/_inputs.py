"""Inputs for the command line: ``--input NAME=SHAPE:DTYPE`` flags, ``.npz`` files, ``zoo:`` models
and the deterministic random requests ``corepipe run`` streams.

Malformed flags raise ``typer.BadParameter`` with a message naming the flag, the value and the fix;
`corepipe.cli` prints it as one ``error:`` line.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx
import typer

from ..artifact.plan import Plan, TensorSpec

__all__ = [
    "DTYPES",
    "InputShapes",
    "RANDOM_INT_HIGH",
    "check_model",
    "example_feeds",
    "length_requests",
    "load_model",
    "load_npz",
    "npz_requests",
    "parse_input_flag",
    "parse_input_shape",
    "random_requests",
]

#: dtypes ``--input`` accepts.
DTYPES = (
    "float32", "float16", "float64", "int64", "int32", "int16", "int8",
    "uint64", "uint32", "uint16", "uint8", "bool",
)
#: Random integer inputs are drawn from [0, RANDOM_INT_HIGH): valid token ids for any embedding
#: table of at least this many rows. Use ``--inputs file.npz`` for real data.
RANDOM_INT_HIGH = 100


#: ``--input NAME=SHAPE:DTYPE`` of `bench` and `tune`, as `compile`'s: fix an input's symbolic dims.
InputShapes = Annotated[list[str] | None, typer.Option(
    "--input", "-i", metavar="NAME=SHAPE:DTYPE",
    help="Fix an input's symbolic dims, e.g. input_ids=1x128:int64 (repeatable; the values are ones; "
    "overrides --inputs), as `corepipe compile --input`.", show_default=False)]


def example_feeds(npz: Path | None, shapes: Sequence[str] | None) -> dict[str, np.ndarray] | None:
    """The example inputs of ``--inputs FILE.npz`` and ``--input NAME=SHAPE:DTYPE`` flags (these
    win), or None when neither is given."""
    feeds = load_npz(npz) if npz is not None else {}
    feeds.update(parse_input_flag(text) for text in shapes or ())
    return feeds or None


def parse_input_flag(text: str) -> tuple[str, np.ndarray]:
    """``"input_ids=1x128:int64"`` -> ``("input_ids", ones((1, 128), int64))``.

    The dtype is optional (default float32); ``NAME=scalar:DTYPE`` gives a 0-d array. The values
    are ones: they only fix shapes, and a one is a valid token id, mask value and divisor.
    """
    name, shape, dtype = parse_input_shape(text)
    return name, np.ones(shape, dtype=np.dtype(dtype or "float32"))


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...], str | None]:
    """``"input_ids=1x128:int64"`` -> ``("input_ids", (1, 128), "int64")``; the dtype is None
    when the flag gives none (a SavedModel input then takes its signature's dtype)."""
    name, eq, rest = text.partition("=")
    usage = "use NAME=SHAPE:DTYPE, e.g. --input input_ids=1x128:int64"
    if not eq or not name.strip():
        raise typer.BadParameter(f"--input {text!r} has no NAME=: {usage}")
    shape_text, _, dtype = rest.rpartition(":") if ":" in rest else (rest, "", None)
    if dtype is not None and dtype not in DTYPES:
        raise typer.BadParameter(
            f"--input {text!r}: unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}"
        )
    shape: tuple[int, ...] = ()
    if shape_text.strip() not in ("", "scalar"):
        dims = shape_text.replace(",", "x").split("x")
        if not all(d.strip().isdigit() and int(d) > 0 for d in dims):
            raise typer.BadParameter(
                f"--input {text!r}: shape {shape_text!r} must be positive integers joined by "
                f"'x'; {usage}"
            )
        shape = tuple(int(d) for d in dims)
    return name.strip(), shape, dtype


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickles)."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise typer.BadParameter(f"--inputs {str(path)!r}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile):
        raise typer.BadParameter(
            f"--inputs {str(path)!r} is not a .npz file: write one with "
            "np.savez(path, input_name=array, ...)"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise typer.BadParameter(
            f"--inputs {str(path)!r} holds one array, not named arrays: save it with "
            "np.savez(path, input_name=array, ...)"
        )
    with data:
        try:
            return {name: data[name] for name in data.files}
        except ValueError as exc:  # object arrays need pickle
            raise typer.BadParameter(f"--inputs {str(path)!r}: {exc}") from None


def check_model(spec: str, *, saved_model: bool = False) -> None:
    """Refuse a MODEL argument that cannot be read, before any work: an unknown ``zoo:NAME``, a
    path that does not exist, or (where ``saved_model`` is False) a directory.

    Raises:
        typer.BadParameter: naming MODEL, what came, and what it may be.
    """
    from .. import zoo

    kinds = "an .onnx file, a TensorFlow SavedModel directory or zoo:NAME" if saved_model else "an .onnx file or zoo:NAME"
    if spec.startswith("zoo:"):
        if spec[4:] not in zoo.names():
            raise typer.BadParameter(
                f"unknown built-in model {spec!r}: use one of " + ", ".join(f"zoo:{n}" for n in zoo.names()))
        return
    path = Path(spec)
    if not path.exists():
        raise typer.BadParameter(f"MODEL {spec!r} does not exist: give {kinds} (zoo:mlp, zoo:resnet50, ...)")
    if path.is_dir() and not saved_model:
        raise typer.BadParameter(
            f"MODEL {spec!r} is a directory: this command measures {kinds}; convert a SavedModel to "
            "ONNX first, or compile it with `corepipe compile` and run the artifact with `corepipe run`")


def load_model(spec: str) -> tuple[str | onnx.ModelProto, dict[str, np.ndarray]]:
    """A model path as given, or ``zoo:NAME`` built with its example inputs."""
    if not spec.startswith("zoo:"):
        return spec, {}
    from .. import zoo

    name = spec.removeprefix("zoo:")
    if name not in zoo.names():
        raise typer.BadParameter(
            f"unknown built-in model {spec!r}: use one of "
            + ", ".join(f"zoo:{n}" for n in zoo.names())
        )
    return zoo.get(name)


def random_requests(
    specs: Sequence[TensorSpec], count: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``count`` deterministic requests: floats N(0, 1), integers in [0, RANDOM_INT_HIGH), bools."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feeds = {}
        for spec in specs:
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
            elif dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
            else:
                feeds[spec.name] = rng.integers(0, RANDOM_INT_HIGH, spec.shape).astype(dtype)
        out.append(feeds)
    return out


def npz_requests(
    specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """Requests from ``.npz`` arrays: each array is one request (the compiled shape) or a stack
    of R requests (shape ``[R, *compiled shape]``); all stacks must hold the same R."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    unknown = [k for k in arrays if k not in names]
    if missing or unknown:
        want = ", ".join(f"{s.name}: {s.describe()}" for s in specs)
        raise typer.BadParameter(
            f"--inputs arrays {sorted(arrays)} do not match the model inputs {{{want}}}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    counts = {}
    for spec in specs:
        arr = arrays[spec.name]
        stacked = arr.ndim == len(spec.shape) + 1 and tuple(arr.shape[1:]) == spec.shape
        counts[spec.name] = arr.shape[0] if stacked else None
    stacks = {c for c in counts.values() if c is not None}
    if len(stacks) > 1 or 0 in stacks:
        raise typer.BadParameter(
            f"--inputs stacks hold different or zero numbers of requests: {counts}"
        )
    n = stacks.pop() if stacks else 1
    return [
        {
            s.name: arrays[s.name][i] if counts[s.name] is not None else arrays[s.name]
            for s in specs
        }
        for i in range(n)
    ]


def length_requests(plan: Plan, lengths: str | None, count: int, seed: int = 0
                    ) -> tuple[list[dict[str, np.ndarray]] | None, str]:
    """`corepipe run`'s random requests over a plan's dynamic dims: at the lengths ``--lengths``
    draws (its unnamed dim is the plan's one dynamic dim besides the batch; the batch stays at
    its smallest), with a note naming what was sent. None and a note when ``lengths`` is None:
    the requests are then at every dim's largest, and the note says so.

    Raises:
        typer.BadParameter: ``--lengths`` on a static artifact, a spec that does not parse, or
            lengths outside the compiled range.
    """
    from ..artifact.dims import ShapeProfile
    from ..bench.lengths import UNNAMED, check_in_range, parse_lengths
    from ..errors import CorepipeError

    shapes = plan.shapes
    if shapes is None:
        if lengths is not None:
            raise typer.BadParameter("--lengths varies a dynamic dim, and this artifact has none (every input is "
                                     "static): compile it with --dynamic, e.g. --dynamic sequence=1:128")
        return None, ""
    if lengths is None:
        top = ", ".join(f"{d} {hi}" for d, (_, hi) in shapes.dims.items())
        return None, f"every request at the largest shapes ({top}); --lengths sends mixed ones"
    seq = [d for d in shapes.dims if d != shapes.batch]
    try:
        profile = parse_lengths(lengths)
        if UNNAMED in profile.names:
            if len(seq) != 1:
                raise CorepipeError(f"name the dim the lengths vary, e.g. {(seq or list(shapes.dims))[0]}=8:64: "
                                    f"this artifact's dynamic dims are {sorted(shapes.dims)}")
            profile = ShapeProfile(tuple((tuple(sorted((seq[0] if n == UNNAMED else n, v) for n, v in dims)), w)
                                         for dims, w in profile.points))
        check_in_range(profile, shapes.dims, "the artifact's range")
    except CorepipeError as exc:
        raise typer.BadParameter(f"--lengths: {exc}") from None
    base = {d: lo if d == shapes.batch else hi for d, (lo, hi) in shapes.dims.items()}
    picks = profile.sample(min(count, 256), seed)
    rng = np.random.default_rng(seed)
    pool = []
    for dims in picks:
        specs = [TensorSpec(s.name, s.dtype, s.shape_for({**base, **dims}) or s.shape) for s in plan.inputs]
        pool.append(random_requests(specs, 1, int(rng.integers(2**31)))[0])
    drawn = [d[profile.names[0]] for d in picks]
    note = (f"{profile.names[0]} drawn from --lengths {lengths}: {min(drawn)}..{max(drawn)}, "
            f"median {int(np.median(drawn))} (seed {seed})")
    return pool, note
