"""Where stages run: one per core, or consecutive stages sharing a core when memory forced
more stages than the host has cores."""

from __future__ import annotations

import itertools
from dataclasses import replace

import corepipe
from corepipe import zoo
from corepipe.artifact.target import resolve_target
from corepipe.compiler.cut.partition import place_stages
from corepipe.runtime.process import assign_cores


def _busiest(placement, seconds):
    load = {}
    for (dev, core), sec in zip(placement, seconds):
        load[(dev, core)] = load.get((dev, core), 0.0) + sec
    return max(load.values())


def test_more_stages_than_cores_groups_consecutive_stages_optimally():
    target = replace(resolve_target("cpu"), cores_per_device=2, devices=1)
    seconds = [48.0, 24.0, 10.0, 7.0, 30.0]
    placement = place_stages(target, seconds)
    cores = [c for _, c in placement]
    assert cores == sorted(cores), "consecutive stages share a core"
    best = min(
        max(sum(seconds[:cut]), sum(seconds[cut:])) for cut in range(1, len(seconds))
    )
    assert _busiest(placement, seconds) == best
    # round-robin would have been worse here
    rr = [(0, k % 2) for k in range(len(seconds))]
    assert _busiest(rr, seconds) > best


def test_no_more_stages_than_cores_keeps_the_topology():
    inf1 = resolve_target("inf1")
    assert place_stages(inf1, [1.0] * 6) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]


def test_assign_cores_follows_the_plan_when_stages_outnumber_cores():
    assert assign_cores(4, [0, 1], None, [0, 0, 0, 1]) == [[0], [0], [0], [1]]
    assert assign_cores(3, [0, 1], None, None) == [[0], [1], [0]]
    assert assign_cores(2, [0, 1, 2, 3], None, [0, 1]) == [[0, 1], [2, 3]]


def test_compiled_plan_records_the_grouping(tmp_path):
    model, feeds = zoo.get("resnet50", image_size=64)
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=5)
    cores = [s.core for s in cm.stages]
    n = min(5, resolve_target("cpu").total_cores)
    assert len(set(cores)) == n
    assert all(b >= a for a, b in itertools.pairwise(cores))
