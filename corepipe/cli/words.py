"""The library's words as the command line's: parameter names in messages and plan notes
become the flags a command-line user types.

An error from the library names its parameters (``num_cores``, ``dynamic_dims={'sequence': (1,
128)}``, ``shape_profile=``); the CLI shows the flag instead (``--num-cores``, ``--dynamic
sequence=1:128``, ``--shape-profile``): a name with an underscore wherever it appears, every
name in the ``name=value``, ``name=`` and ``name={...}`` forms fixes are given in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["API_FLAGS", "flag_names"]

#: Library parameter names -> the flag a command-line user types for them (a command that
#: spells one otherwise passes its own, e.g. bench and tune read the shape profile from --lengths).
API_FLAGS = {
    "num_cores": "--num-cores",
    "core_memory": "--core-memory",
    "max_in_flight": "--max-in-flight",
    "compiler_args": "--compiler-arg",
    "example_inputs": "--input",
    "threads_per_stage": "--threads-per-stage",
    "latency_budget": "--latency-budget",
    "load_rounds": "--load-rounds",
    "precision": "--precision",
    "engine": "--engine",
    "balance": "--balance",
    "replicas": "--replicas",
    "target": "--target",
    "backend": "--backend",
    "objective": "--objective",
    "address": "--address",
    "dynamic_dims": "--dynamic",
    "shape_profile": "--shape-profile",
    "pad_values": "--pad-value",
    "buckets": "--buckets",
    "max_batch": "--max-batch",
    "batch_delay": "--batch-delay",
}
_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def _dict_form(param: str, flag: str, body: str) -> str | None:
    """``dynamic_dims={'sequence': (1, 300)}`` as ``--dynamic sequence=1:300`` (one flag per
    entry), or None where the entries do not read as that parameter's."""
    entries = re.findall(r"['\"]([^'\"]+)['\"]\s*:\s*(\([^)]*\)|\[[^\]]*\]|[^,]+)", body)
    parts = []
    for key, value in entries:
        nums = re.findall(_NUMBER, value)
        if param == "dynamic_dims" and len(nums) == 2:
            parts.append(f"{flag} {key}={nums[0]}:{nums[1]}")
        elif param == "buckets" and nums:
            parts.append(f"{flag} {key}={','.join(nums)}")
        elif param == "pad_values" and len(nums) == 1:
            parts.append(f"{flag} {key}={nums[0]}")
        elif param == "example_inputs":  # arrays: a file of them (--input fixes shapes only)
            return "--inputs FILE.npz"
        else:
            return None
    return " ".join(parts) or None


def flag_names(message: str, flags: Mapping[str, str] | None = None) -> str:
    """``message`` with the library's parameter names as the flags the user types (`API_FLAGS`,
    ``flags`` first): ``precision='bf16'`` -> ``--precision bf16``, ``replicas=`` ->
    ``--replicas``, ``dynamic_dims={'sequence': (1, 300)}`` -> ``--dynamic sequence=1:300``,
    ``buckets=None`` -> ``--buckets none``."""
    flags = flags or {}
    names = {**API_FLAGS, "cores": flags.get("num_cores", API_FLAGS["num_cores"]), **flags}
    keys = "|".join(re.escape(k) for k in sorted(names, key=len, reverse=True))

    def as_dict(m: re.Match[str]) -> str:
        return _dict_form(m.group(1), names[m.group(1)], m.group(2)) or m.group(0)

    message = re.sub(rf"\b({keys})=\{{([^{{}}]*)\}}", as_dict, message)

    def assigned(m: re.Match[str]) -> str:
        value = next((g for g in m.groups()[1:] if g is not None), "")
        value = "none" if value == "None" else value
        return names[m.group(1)] + (f" {value}" if value else "")

    message = re.sub(rf"\b({keys})=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;:)'\"{{]+))?", assigned, message)
    bare = "|".join(re.escape(k) for k in names if "_" in k)
    return re.sub(rf"(?<![-\w])({bare})\b", lambda m: names[m.group(1)], message) if bare else message
