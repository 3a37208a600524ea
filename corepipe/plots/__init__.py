"""Pictures: a plan as bars per stage, and a pipeline's requests as a Gantt chart.

matplotlib is an optional dependency (``pip install 'corepipe[plot]'``), imported only when a
picture is drawn; without it these functions raise `CorepipeError` saying how to install it.
Figures are made without pyplot (no GUI backend, no global state), so they are safe in servers
and threads.

    >>> from corepipe.plots import save, plan_figure, timeline_figure   # doctest: +SKIP
    >>> save(plan_figure(corepipe.CompiledModel.open("out/").plan), "plan.png")
    >>> save(timeline_figure(pipe.timeline()), "timeline.png")
"""

from __future__ import annotations

from ._mpl import require_matplotlib, save
from .plan import plan_figure
from .timeline import timeline_figure

__all__ = ["plan_figure", "timeline_figure", "save", "require_matplotlib"]
