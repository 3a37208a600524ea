"""The tuner's pure parts, on numbers alone: the search space, the cost model and its pruning,
the Pareto front and the choice, the capacity answer (against hand-computed queueing figures)
and its errors, the picture. Nothing here starts a process."""

from __future__ import annotations

import math

import pytest

import corepipe
from corepipe.tune import (
    Candidate,
    CostModel,
    Point,
    answer,
    candidates,
    choose,
    dominated_by,
    pareto_front,
    parse_duration,
    select,
)
from corepipe.tune.capacity import erlang_c, p99_latency
from corepipe.tune.plot import render_png


def test_candidates_use_every_core_and_respect_the_stage_bounds():
    got = candidates(16)
    assert len(got) == 15 and all(c.cores == 16 for c in got)
    assert Candidate(replicas=2, stages=4, threads=2) in got
    assert {c.stages for c in candidates(16, min_stages=2, max_stages=4)} == {2, 4}
    assert candidates(2) == [Candidate(2, 1, 1), Candidate(1, 1, 2), Candidate(1, 2, 1)]
    assert Candidate(2, 4, 2).label == "2r x 4s x 2t" and Candidate(2, 4, 2).window == 8


def test_cost_model_uses_the_measured_thread_scaling_and_littles_law():
    perfect = CostModel(one_core_s=0.1, cores=4, k_thread_s=0.025, handoff_s=0.0)
    assert perfect.thread_exponent == pytest.approx(1.0)
    thr, lat = perfect.predict(Candidate(1, 1, 4))
    assert thr == pytest.approx(40.0) and lat == pytest.approx(0.025)
    none = CostModel(one_core_s=0.1, cores=4, k_thread_s=0.1, handoff_s=0.0)
    assert none.predict(Candidate(1, 1, 4))[0] == pytest.approx(10.0)
    uneven = CostModel(one_core_s=0.1, cores=4, slowest_share={2: 0.6}, handoff_s=0.001)
    thr, lat = uneven.predict(Candidate(2, 2, 1))
    assert thr == pytest.approx(2 / 0.061) and lat == pytest.approx(2 * 0.061)  # window 4 / throughput


def test_select_prunes_what_memory_cannot_hold_and_what_is_clearly_beaten():
    model = CostModel(one_core_s=0.1, cores=16, k_thread_s=0.1 / 16 ** 0.7, slowest_share={16: 0.2},
                      weight_bytes=10, memory_bytes=40)
    keep, pruned = select(candidates(16), model, objective="throughput", keep=4)
    assert len(keep) == 4
    assert all(c.replicas * 10 <= 40 for c in keep)  # 16 or 8 copies of the weights do not fit
    assert Candidate(16, 1, 1) in pruned and Candidate(8, 1, 2) in pruned
    assert Candidate(1, 16, 1) in pruned  # its slowest stage holds 20 %: clearly beaten
    assert Candidate(1, 1, 16) in keep  # the best predicted latency is always measured
    lat_keep, _ = select(candidates(16), model, objective="latency", keep=1)
    assert lat_keep == [Candidate(1, 1, 16)]


def _p(name, thr, p50, p99=None, kind="candidate", cand=None, chunks=()):
    return Point(name, kind, thr, p50, p99 if p99 is not None else p50 * 1.2, candidate=cand,
                 chunk_throughputs=list(chunks))


def test_pareto_front_choice_and_domination():
    a = _p("a", 10, 0.20, cand=Candidate(2, 1, 1))
    b = _p("b", 8, 0.10, cand=Candidate(1, 1, 2))
    c = _p("c", 7, 0.15, cand=Candidate(1, 2, 1))  # beaten by b on both
    peer = _p("peer", 9, 0.12, kind="peer")
    pts = [a, b, c, peer]
    assert pareto_front(pts) == [b, peer, a]
    assert dominated_by(c, pts) == [b, peer]
    assert choose(pts, "throughput") is a
    assert choose(pts, "latency") is b
    assert choose(pts, "throughput", latency_budget_s=0.15) is b  # a's p99 0.24 s is over budget
    with pytest.raises(corepipe.DeploymentError, match=r"lowest p99 measured is 120 ms \(b"):
        choose(pts, "throughput", latency_budget_s=0.05)
    with pytest.raises(corepipe.DeploymentError, match="no candidate"):
        choose([peer], "latency")
    # within the tie band (noise), the better figure on the other axis wins
    close = _p("close", 9.8, 0.05, cand=Candidate(1, 1, 2))
    assert choose([a, close], "throughput") is close
    assert choose([a, close], "throughput", tie=0.0) is a
    slow_but_quick = _p("quick", 9.0, 0.0505, cand=Candidate(1, 1, 2))
    assert choose([close, slow_but_quick], "latency") is close  # 1 % slower, more throughput


def test_erlang_c_and_the_p99_wait_match_hand_computed_values():
    # M/M/1: P(wait) = rho; M/M/2 at a = 1: C = 1/3 (textbook).
    assert erlang_c(1, 0.5) == pytest.approx(0.5)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # M/M/1, mu 10, lambda 5: P(W > t) = 0.5 exp(-5 t); p99 wait = ln(50) / 5.
    assert p99_latency(1, 5.0, 10.0, 0.1) == pytest.approx(0.1 + math.log(50) / 5)
    assert p99_latency(1, 10.0, 10.0, 0.1) == math.inf
    assert p99_latency(100, 1.0, 10.0, 0.1) == pytest.approx(0.1)  # nobody waits


def test_capacity_answer_and_how_sure_it_is():
    rep = Candidate(2, 1, 1)  # 2 replicas of 1 core each, 20 req/s together: mu = 10 per replica
    plan = _p("2r x 1s x 1t", 20.0, 0.1, 0.12, cand=rep, chunks=[19.0, 20.0, 21.0])
    got = answer([plan, _p("peer", 100, 0.01, kind="peer")], rate=50.0, p99_budget_s=0.5, measured_cores=2)
    assert got.plan == "2r x 1s x 1t" and got.cores == got.replicas
    assert got.replicas >= 6  # 50 req/s needs more than 5 replicas of 10 req/s
    assert got.predicted_p99_s <= 0.5 and p99_latency(got.replicas - 1, 50.0, 10.0, 0.12) > 0.5
    lo, hi = got.replicas_range
    assert lo <= got.replicas <= (hi or 10**9)
    assert got.confidence in ("medium", "low") and any("extrapolates" in r for r in got.reasons)
    assert "Erlang C" in got.model and f"{got.replicas} replicas" in got.text()
    here = answer([plan], rate=5.0, p99_budget_s=1.0, measured_cores=2)
    assert here.cores <= 2 and here.confidence in ("high", "medium")


def test_capacity_errors_say_what_is_possible():
    plan = _p("1r x 1s x 2t", 10.0, 0.1, 0.12, cand=Candidate(1, 1, 2))
    with pytest.raises(corepipe.DeploymentError, match=r"no core count holds a p99 of 50 ms.*120 ms") as e:
        answer([plan], rate=5.0, p99_budget_s=0.05, measured_cores=2)
    assert "above 120 ms" in e.value.possible
    with pytest.raises(corepipe.DeploymentError, match=r"no core count up to 8 holds 1,000 req/s") as e:
        answer([plan], rate=1000.0, p99_budget_s=1.0, measured_cores=2, max_cores=8)
    assert "at most" in e.value.possible and "req/s" in e.value.possible


def test_parse_duration():
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("0.25s") == pytest.approx(0.25)
    assert parse_duration("150") == pytest.approx(0.15)
    assert parse_duration("500us") == pytest.approx(5e-4)
    for bad in ("", "fast", "-3ms", "0"):
        with pytest.raises(corepipe.DeploymentError, match="not a positive duration"):
            parse_duration(bad)


def test_points_round_trip_and_the_picture_is_a_png():
    pts = [_p("2r x 1s x 1t", 20.0, 0.1, cand=Candidate(2, 1, 1)), _p("ort 2 threads", 18.0, 0.06, kind="peer")]
    assert [Point.from_dict(p.to_dict()) for p in pts] == pts
    png = render_png(pts, pts[0], title="test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_picture_names_every_point_without_overlaps_and_shows_a_one_point_front():
    """Crowded peers (same latency, close throughputs) each get a label of their own; a Pareto
    front of one point still has a visible mark and legend entry."""
    from corepipe.tune.plot import tune_figure

    peers = [_p(name, thr, 0.0250, kind="peer") for name, thr in (
        ("ort 1 session shared by 2 threads", 13450), ("2 sessions in parallel", 12320), ("ort 2 threads", 7070))]
    peers += [_p("openvino LATENCY (2 threads, 1 in flight)", 7580, 0.054, kind="peer"),
              _p("ort 1 thread", 36550, 0.0249, kind="peer")]
    cands = [_p("1r x 1s x 2t", 4450, 0.22, cand=Candidate(1, 1, 2)), _p("2r x 1s x 1t", 3400, 0.51,
                                                                        cand=Candidate(2, 1, 1))]
    fig = tune_figure(peers + cands, cands[0], title="crowded")
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == sorted(p.name for p in peers + cands)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two labels overlap"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front (1 point)" in legend  # ort 1 thread beats everything here
    ring = next(c for c in ax.collections if c.get_label() == "Pareto front (1 point)")
    assert len(ring.get_offsets()) == 1


def test_the_search_space_is_one_object():
    from corepipe.tune import SearchSpace

    space = SearchSpace(16)
    assert space.candidates() == candidates(16) and space.stage_counts() == [1, 2, 4, 8, 16]
    bounded = space.bounded(2, 4)
    assert {c.stages for c in bounded.candidates()} == {2, 4} and bounded.cores == 16
    assert SearchSpace(2).candidates() == [Candidate(2, 1, 1), Candidate(1, 1, 2), Candidate(1, 2, 1)]


def test_points_name_their_plan_and_precision():
    p = Point("2r x 4s x 1t", "candidate", 10.0, 0.1, candidate=Candidate(2, 4, 1), precision="bf16")
    assert (p.replicas, p.stages, p.threads, p.precision) == (2, 4, 1, "bf16")
    peer = Point("ort 1 thread", "peer", 5.0, 0.2)
    assert peer.replicas is None and peer.precision == "fp32"


def test_the_summary_says_a_comparison_under_unequal_load_is_not_fair():
    """Issue 28: others took 24-57 % of the CPUs during corepipe's plans and 1-3 % during the
    peers; the summary said "Peers both faster and lower-latency". It says why the comparison
    is unfair instead, and compares as before when the load was even (or unknown)."""
    import dataclasses
    from pathlib import Path

    from corepipe.tune import TuneResult

    def run(mine, theirs):
        cands = [dataclasses.replace(_p(n, 1500.0, 0.0006, cand=c), foreign_cpu=f)
                 for (n, c), f in zip((("1r x 1s x 2t", Candidate(1, 1, 2)), ("2r x 1s x 1t", Candidate(2, 1, 1))), mine)]
        peers = [dataclasses.replace(_p(n, 3600.0, 0.00014, kind="peer"), foreign_cpu=f)
                 for n, f in zip(("ort 1 thread", "ort 2 threads"), theirs)]
        return TuneResult(model="m", cores=2, objective="throughput", latency_budget_s=None, points=cands + peers,
                          pruned=[], chosen=cands[0], path=Path("x"), host="h", seconds=1.0)

    noisy = run([0.24, 0.57], [0.01, 0.03])
    text = " ".join(noisy.summary())
    assert "Peers both faster and lower-latency" not in text
    assert ("Not a fair comparison: other processes took 24-57 % of the CPUs while corepipe's plans ran, against "
            "1-3 % during the peers") in text
    quiet = run([0.02, 0.05], [0.01, 0.03])
    assert quiet.unfair() is None
    assert "Peers both faster and lower-latency: ort 1 thread, ort 2 threads." in quiet.summary()
    assert run([0.5, 0.6], [0.45, 0.55]).unfair() is None  # loaded alike: the comparison stands
    assert run([None, None], [0.01, None]).unfair() is None  # not measured: nothing to say


def test_a_crowd_of_peers_still_gets_a_label_each_with_no_overlaps():
    """Issue 28: where more peers crowd one spot than the near places hold, labels overlapped;
    they go farther out instead, each tied to its marker by a thin line."""
    from matplotlib.text import Text

    from corepipe.tune.plot import tune_figure

    names = ["ort 1 thread", "ort 2 threads", "2 sessions in parallel", "ort 1 session shared by 2 threads",
             "openvino THROUGHPUT (2 streams)", "openvino LATENCY (2 threads, 1 in flight)",
             "openvino THROUGHPUT (2 streams, batch 2)", "openvino THROUGHPUT (2 streams, batch 4)",
             "ort 2 threads, batch 2", "ort 2 threads, batch 4", "ort 1 thread, batch 2", "ort 1 thread, batch 4"]
    peers = [_p(name, 3600.0 - 15 * i, 0.00014, kind="peer") for i, name in enumerate(names)]
    cands = [_p("1r x 1s x 2t", 1500, 0.0006, cand=Candidate(1, 1, 2)),
             _p("2r x 1s x 1t", 1400, 0.0008, cand=Candidate(2, 1, 1))]
    fig = tune_figure(peers + cands, cands[0], title="a crowd")
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    for t in ax.texts:
        t.update_positions(renderer)
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts]
    assert sorted(name for name, _ in boxes) == sorted(p.name for p in peers + cands)
    clashes = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
    assert clashes == [], clashes
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for _, b in boxes), "a label runs out of the plot"
    assert any(t.get_gid() == "leader" and t.arrow_patch is not None for t in ax.texts)
