"""The pure partition solver against brute force: every cut of small random problems."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corepipe.compiler.cut.solver import Infeasible, Problem, min_stages, solve, stage_costs, stage_memory

Links = list[tuple[float, float]]
REL = 1e-9


def all_cuts(n: int, k: int) -> list[list[int]]:
    """Every ``[0, b1, ..., n]`` cutting ``n`` nodes into ``k`` non-empty contiguous stages."""
    return [[0, *inner, n] for inner in itertools.combinations(range(1, n), k - 1)]


def fits(problem: Problem, bounds: Sequence[int]) -> bool:
    return all(
        stage_memory(problem, bounds[s], bounds[s + 1]) <= problem.capacity
        for s in range(len(bounds) - 1)
    )


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(1.0, abs(a), abs(b))


@st.composite
def problems(draw: st.DrawFn, max_n: int = 9) -> Problem:
    n = draw(st.integers(1, max_n))
    n_weights = draw(st.integers(0, 5))
    weight_bytes = draw(st.lists(st.integers(0, 100), min_size=n_weights, max_size=n_weights))
    # Small lists that may repeat an id (a node reading one weight twice) and share ids across
    # nodes (tied weights read far apart).
    reads = st.lists(st.integers(0, n_weights - 1), max_size=3) if n_weights else st.just([])
    node_weights = draw(st.lists(reads, min_size=n, max_size=n))
    # Small integers and halves keep float sums exact, so ties between cuts really happen.
    compute = draw(st.lists(st.integers(0, 12).map(lambda x: x / 2), min_size=n, max_size=n))
    boundary = draw(st.lists(st.integers(0, 64).map(float), min_size=n + 1, max_size=n + 1))
    capacity = draw(st.integers(0, 250))
    return Problem(compute, node_weights, weight_bytes, boundary, capacity)


@st.composite
def problem_k_links(draw: st.DrawFn) -> tuple[Problem, int, Links]:
    problem = draw(problems())
    k = draw(st.integers(1, min(4, problem.n)))
    link = st.tuples(st.integers(0, 6).map(lambda x: x / 4), st.sampled_from([1.0, 2.0, 4.0, 8.0]))
    links = draw(st.lists(link, min_size=k + 1, max_size=k + 1))
    return problem, k, links


@settings(max_examples=300, deadline=None)
@given(problem_k_links())
def test_solve_matches_brute_force(case: tuple[Problem, int, Links]) -> None:
    problem, k, links = case
    feasible = [b for b in all_cuts(problem.n, k) if fits(problem, b)]
    if not feasible:
        with pytest.raises(Infeasible):
            solve(problem, k, links)
        return
    best = min(max(stage_costs(problem, b, links)) for b in feasible)
    bounds = solve(problem, k, links)
    assert len(bounds) == k + 1 and bounds[0] == 0 and bounds[-1] == problem.n
    assert all(a < b for a, b in itertools.pairwise(bounds)), bounds
    assert fits(problem, bounds), bounds
    got = max(stage_costs(problem, bounds, links))
    assert close(got, best), (bounds, got, best)


@settings(max_examples=300, deadline=None)
@given(problem_k_links())
def test_solve_breaks_ties_by_total_latency(case: tuple[Problem, int, Links]) -> None:
    """Among cuts as slow as the best, `solve` returns one with the lowest summed stage time."""
    problem, k, links = case
    feasible = [b for b in all_cuts(problem.n, k) if fits(problem, b)]
    if not feasible:
        return
    best = min(max(stage_costs(problem, b, links)) for b in feasible)
    tied = [b for b in feasible if close(max(stage_costs(problem, b, links)), best)]
    best_sum = min(sum(stage_costs(problem, b, links)) for b in tied)
    got = solve(problem, k, links)
    assert close(sum(stage_costs(problem, got, links)), best_sum), (got, tied)


def _own_bytes(problem: Problem, i: int) -> int:
    return sum(problem.weight_bytes[w] for w in set(problem.node_weights[i]))


@settings(max_examples=300, deadline=None)
@given(problems())
def test_min_stages_is_minimal(problem: Problem) -> None:
    too_big = [i for i in range(problem.n) if _own_bytes(problem, i) > problem.capacity]
    if too_big:
        with pytest.raises(Infeasible) as info:
            min_stages(problem)
        assert info.value.node in too_big
        assert info.value.needed == _own_bytes(problem, info.value.node)
        return
    m = min_stages(problem)
    assert 1 <= m <= problem.n
    assert any(fits(problem, b) for b in all_cuts(problem.n, m)), m
    if m > 1:
        assert not any(fits(problem, b) for b in all_cuts(problem.n, m - 1)), m


def test_min_stages_names_the_node_over_capacity() -> None:
    problem = Problem([1.0] * 4, [[0], [1], [2], [0]], [10, 11, 50], [0.0] * 5, 20)
    with pytest.raises(Infeasible) as info:
        min_stages(problem)
    assert info.value.node == 2
    assert info.value.needed == 50
    assert "node 2" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_stage_memory_counts_each_distinct_weight_once(problem: Problem, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, problem.n - 1))
    end = data.draw(st.integers(start + 1, problem.n))
    ids = {w for i in range(start, end) for w in problem.node_weights[i]}
    assert stage_memory(problem, start, end) == sum(problem.weight_bytes[w] for w in ids)


def test_shared_weight_counts_in_every_stage_that_reads_it() -> None:
    # Weight 0 (tied embedding, 100 bytes) is read by node 0 and node 3; weight 1 by node 1 twice.
    problem = Problem([1.0] * 4, [[0], [1, 1], [], [0]], [100, 7], [0.0] * 5, 107)
    assert stage_memory(problem, 0, 2) == 107
    assert stage_memory(problem, 2, 4) == 100
    assert stage_memory(problem, 0, 4) == 107
    assert stage_memory(problem, 2, 3) == 0
    # Two stages: each holds its own copy of weight 0, so the plan holds 207 bytes in all.
    assert stage_memory(problem, 0, 2) + stage_memory(problem, 2, 4) == 207
    # With room for one copy plus weight 1, one stage fits; with less, no cut does.
    assert min_stages(problem) == 1
    tight = Problem([1.0] * 4, [[0], [1, 1], [], [0]], [100, 7], [0.0] * 5, 106)
    # 106 bytes: node 1 (7) fits beside neither copy of weight 0 (100), so it stands alone.
    assert min_stages(tight) == 3
    assert fits(tight, [0, 1, 2, 4]) and not any(fits(tight, b) for b in all_cuts(4, 2))
    with pytest.raises(Infeasible):
        solve(Problem([1.0] * 4, [[0], [1], [], [0]], [100, 7], [0.0] * 5, 106), 1, [(0, 1)] * 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compute": []}, "at least one node"),
        ({"node_weights": [[0]]}, "node_weights"),
        ({"boundary_bytes": [0.0, 0.0]}, "boundary_bytes"),
        ({"boundary_bytes": [0.0] * 5}, "boundary_bytes"),
        ({"node_weights": [[0], [5], []]}, "weight"),
        ({"node_weights": [[0], [-1], []]}, "weight"),
    ],
)
def test_problem_rejects_inconsistent_lengths(kwargs: dict, match: str) -> None:
    base = {
        "compute": [1.0, 2.0, 3.0],
        "node_weights": [[0], [], [1]],
        "weight_bytes": [4, 8],
        "boundary_bytes": [0.0, 1.0, 2.0, 3.0],
        "capacity": 100,
    }
    base.update(kwargs)
    if not base["compute"]:
        base["node_weights"], base["boundary_bytes"] = [], [0.0]
    with pytest.raises(ValueError, match=match):
        Problem(**base)


@pytest.mark.parametrize("k", [0, -1, 4, 10])
def test_solve_rejects_k_out_of_range(k: int) -> None:
    problem = Problem([1.0, 2.0, 3.0], [[], [], []], [], [0.0] * 4, 10)
    with pytest.raises(ValueError, match="stages"):
        solve(problem, k, [(0.0, 1.0)] * (max(k, 0) + 1))


def test_solve_rejects_wrong_number_of_links() -> None:
    problem = Problem([1.0, 2.0, 3.0], [[], [], []], [], [0.0] * 4, 10)
    with pytest.raises(ValueError, match="links"):
        solve(problem, 2, [(0.0, 1.0)] * 2)
