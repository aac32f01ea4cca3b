"""The report's plots: accuracy against inference GFLOPs and against batch-1 latency, with 95% error bars.

Colour = width, marker = TTA mode (hollow = selective), one line per backend joining the single-view points across
widths (the scaling curve TTA competes with). Entrants (models dawnpipe did not train) join the FLOPs plot in
colours of their own, each on its reference rows (FLOPs are machine-free); on the latency plot an entrant's rows
appear only in the panel of a backend where they share a timing session with the family's (latency is the
machine's). No text is drawn on the points, so nothing overlaps or falls outside the frame; the legend sits outside
the axes and the figure is saved with a tight bounding box.
"""

from __future__ import annotations

from pathlib import Path

from dawnpipe.common.files import atomic_write
from dawnpipe.costs.points import Point, reference_rows_by_model, timed_with
from dawnpipe.costs.rules import Rule

_MARKERS = {"none": "o", "flip": "s", "translate": "^", "flip-translate": "D", "airbench94": "P"}
_ENTRANT_COLORS = ("tab:pink", "tab:brown", "tab:cyan", "tab:olive", "black")  # not viridis, not a rule's line


def _style(p: Point, color: object) -> dict:
    base = p.tta.removeprefix("selective-")
    selective = p.tta.startswith("selective-")
    return {
        "marker": _MARKERS.get(base, "o"),
        "color": color,
        "markerfacecolor": "none" if selective else color,
        "markersize": 6,
        "linestyle": "none",
        "ecolor": color,
        "elinewidth": 1,
        "capsize": 2,
    }


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, points: list[Point], colors: dict[float, tuple], extra: list) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=f"width {w:g}") for w, c in colors.items()]
    modes = sorted({p.tta for p in points}, key=lambda m: (m.startswith("selective"), m))
    for mode in modes:
        base = mode.removeprefix("selective-")
        hollow = mode.startswith("selective-")
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                marker=_MARKERS.get(base, "o"),
                linestyle="none",
                markerfacecolor="none" if hollow else "black",
                label=mode,
            )
        )
    ax.legend(handles=handles + extra, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _save(fig, path: Path, plt) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def _errorbars(ax, points: list[Point], x_of, color_of) -> None:
    for p in points:
        y = 100 * p.accuracy
        low, high = 100 * p.ci95[0], 100 * p.ci95[1]
        ax.errorbar([x_of(p)], [y], yerr=[[max(y - low, 0)], [max(high - y, 0)]], **_style(p, color_of(p)))


def _scaling_curves(ax, points: list[Point], x_of, plt, named: bool = True) -> list:
    """Join each backend's single-view points across widths; ``named`` puts the backend in the legend label
    (off where every panel shows one backend of its own, so one legend entry serves them all)."""
    from matplotlib.lines import Line2D

    handles = []
    styles = ["-", "--", ":", "-."]
    for k, backend in enumerate(sorted({(p.backend, p.precision) for p in points})):
        plain = sorted(
            (p for p in points if (p.backend, p.precision) == backend and p.tta == "none" and x_of(p) is not None),
            key=x_of,
        )
        if len(plain) > 1:
            style = styles[k % len(styles)]
            ax.plot([x_of(p) for p in plain], [100 * p.accuracy for p in plain], color="gray", lw=1, ls=style, zorder=1)
            label = f"no TTA across widths: {' '.join(backend)}" if named else "no TTA across widths"
            handles.append(Line2D([], [], color="gray", lw=1, ls=style, label=label))
    return handles


def plot_gflops(
    path: Path, points: list[Point], rules: list[Rule], front: list[str], reference: float, entrants: tuple = ()
) -> Path:
    """Accuracy against total inference GFLOPs per image (model x views), one backend's points (FLOPs do not
    depend on the backend; the reference backend is onnxruntime fp32 where present), and each entrant's points on
    its reference rows (points.reference_rows), in a colour of its own."""
    from matplotlib.lines import Line2D

    plt = _setup()
    backends = sorted({(p.backend, p.precision) for p in points})
    chosen = next((b for b in backends if b[0].startswith("onnxruntime") and b[1] == "fp32"), backends[0])
    shown = [p for p in points if (p.backend, p.precision) == chosen]
    widths = sorted({p.width for p in points})
    colors = dict(
        zip(widths, plt.cm.viridis([0.1 + 0.8 * i / max(len(widths) - 1, 1) for i in range(len(widths))]), strict=True)
    )
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x_of = lambda p: p.gflops_per_image  # noqa: E731
    _errorbars(ax, shown, x_of, lambda p: colors[p.width])
    extra = _scaling_curves(ax, shown, x_of, plt)
    drawn = list(shown)  # every point on the plot: its TTA modes make the marker legend
    for (model, rows), color in zip(reference_rows_by_model(list(entrants)).items(), _ENTRANT_COLORS, strict=False):
        _errorbars(ax, rows, x_of, lambda _p, c=color: c)
        where = f"{rows[0].backend} {rows[0].precision}"
        extra.append(Line2D([], [], color=color, marker="o", linestyle="none", label=f"{model} (entrant, {where})"))
        drawn += rows
    frontier = sorted((p for p in shown if p.label in front), key=x_of)
    if len(frontier) > 1:
        ax.step(
            [x_of(p) for p in frontier],
            [100 * p.accuracy for p in frontier],
            where="post",
            color="tab:green",
            lw=1.0,
            alpha=0.6,
            zorder=0,
        )
        extra.append(Line2D([], [], color="tab:green", lw=1.0, alpha=0.6, label="Pareto frontier"))
    budgets = [r for r in rules if r.limits == "gflops"]
    for rule in budgets:
        same = abs(rule.budget - reference) <= 1e-6 * reference
        label = (
            f"total-flops budget = one ResNet-18 pass ({reference:.3g} GFLOP)"
            if same
            else f"{rule.name} budget {rule.budget:.3g} GFLOP"
        )
        ax.axvline(rule.budget, color="tab:red", ls="--", lw=1.2)
        extra.append(Line2D([], [], color="tab:red", ls="--", lw=1.2, label=label))
    if not any(abs(r.budget - reference) <= 1e-6 * reference for r in budgets):
        ax.axvline(reference, color="tab:blue", ls=":", lw=1.5)
        extra.append(
            Line2D([], [], color="tab:blue", ls=":", lw=1.5, label=f"one ResNet-18 pass {reference:.3g} GFLOP")
        )
    _log_axis(ax)
    ax.set_xlabel("total inference GFLOPs per image (model FLOPs x views), log scale")
    ax.set_ylabel("top-1 test accuracy (%), mean over seeds, 95% CI")
    where = f"family: {' '.join(chosen)}; entrants on their own rows" if entrants else " ".join(chosen)
    ax.set_title(f"Accuracy vs inference FLOPs ({where})")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, drawn, colors, extra)
    return _save(fig, path, plt)


def plot_latency(path: Path, points: list[Point], rules: list[Rule], entrants: tuple = ()) -> Path:
    """Accuracy against batch-1 mean latency per image, one panel per backend (latency depends on it); an entrant's
    rows in a panel only where they were timed in one session with the family's rows there."""
    from matplotlib.lines import Line2D

    plt = _setup()
    backends = sorted({(p.backend, p.precision) for p in points if p.latency_ms is not None})
    widths = sorted({p.width for p in points})
    colors = dict(
        zip(widths, plt.cm.viridis([0.1 + 0.8 * i / max(len(widths) - 1, 1) for i in range(len(widths))]), strict=True)
    )
    fig, axes = plt.subplots(
        1, len(backends), figsize=(5.2 * len(backends) + 1.8, 4.6), dpi=110, sharey=True, squeeze=False
    )
    x_of = lambda p: p.latency_ms  # noqa: E731
    extra: list = []
    drawn, named_entrants, entrant_handles = list(points), set(), []  # what the legend names
    for ax, backend in zip(axes[0], backends, strict=True):
        shown = [p for p in points if (p.backend, p.precision) == backend and p.latency_ms is not None]
        _errorbars(ax, shown, x_of, lambda p: colors[p.width])
        for p in shown:
            if p.latency_flagged:
                ax.plot([x_of(p)], [100 * p.accuracy], marker="x", color="tab:red", markersize=9, linestyle="none")
        curves = _scaling_curves(ax, shown, x_of, plt, named=False)
        extra = extra or curves
        together = timed_with(shown, list(entrants))
        for model, color in zip(sorted({p.model for p in entrants}), _ENTRANT_COLORS, strict=False):
            rows = [p for p in together if p.model == model]
            _errorbars(ax, rows, x_of, lambda _p, c=color: c)
            drawn += rows
            if rows and model not in named_entrants:
                named_entrants.add(model)
                label = f"{model} (entrant, timed with the family)"
                entrant_handles.append(Line2D([], [], color=color, marker="o", linestyle="none", label=label))
        for rule in rules:
            if rule.limits == "latency_ms":
                ax.axvline(rule.budget, color="tab:red", ls="--", lw=1.2)
            if rule.limits == "accuracy":
                ax.axhline(100 * rule.budget, color="tab:orange", ls="--", lw=1)
        _log_axis(ax)
        ax.set_title(" ".join(backend), fontsize=9)
        ax.set_xlabel("batch-1 mean latency per image (ms), log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("top-1 test accuracy (%), mean over seeds, 95% CI")
    for rule in rules:
        if rule.limits == "latency_ms":
            extra.append(Line2D([], [], color="tab:red", ls="--", lw=1.2, label=f"latency budget {rule.budget:g} ms"))
        if rule.limits == "accuracy":
            extra.append(
                Line2D([], [], color="tab:orange", ls="--", lw=1, label=f"dawnbench bar {100 * rule.budget:g}%")
            )
    extra.append(Line2D([], [], color="tab:red", marker="x", linestyle="none", label="latency spread flagged"))
    _legend(axes[0][-1], drawn, colors, entrant_handles + extra)
    fig.suptitle("Accuracy vs measured latency, per backend", fontsize=10)
    return _save(fig, path, plt)


def _log_axis(ax) -> None:
    """A log x axis whose ticks read as plain numbers (0.2, 0.5, 1, 2, 5), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
