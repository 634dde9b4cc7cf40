"""PNG line plots of recall figures (matplotlib, Agg backend: no display needed).

matplotlib is an optional dependency (``pip install 'tldr-index[plot]'``); without it
:func:`line_panels` raises :class:`~tldr_index.errors.InvalidParameterError` saying how to install
it, before anything is computed if callers use :func:`require_matplotlib` first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import InvalidParameterError

INSTALL = "pip install 'tldr-index[plot]'  (or: pip install 'matplotlib>=3.7,<4')"


def require_matplotlib(param: str = "plot") -> None:
    """Raise a one-line error naming ``param`` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidParameterError(
            f"The '{param}' parameter needs matplotlib, which is not installed. Install it with: "
            f"{INSTALL}") from None


@dataclass
class Panel:
    """One set of axes: ``series`` maps a label to ``(xs, ys)``; ``hlines`` a label to a y."""

    title: str
    xlabel: str
    ylabel: str = "recall@10"
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    hlines: dict[str, float] = field(default_factory=dict)
    logx: bool = True
    xticks: list[float] | None = None


def line_panels(panels: list[Panel], path: str | os.PathLike, *, title: str = "",
                note: str = "") -> str:
    """Write ``panels`` side by side as a PNG at ``path`` (one marker line per series; the same
    label gets the same colour in every panel). Returns the path. Cost: under a second."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for p in panels:
        labels += [s for s in list(p.series) + list(p.hlines) if s not in labels]
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 4.2),
                             squeeze=False, sharey=True)
    for ax, p in zip(axes[0], panels):
        for name, (xs, ys) in p.series.items():
            pts = sorted((x, y) for x, y in zip(xs, ys) if y is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=4, lw=1.6,
                        label=name, color=colours[name])
        for name, y in p.hlines.items():
            ax.axhline(y, ls="--", lw=1.2, label=name, color=colours[name])
        if p.logx:
            ax.set_xscale("log", base=2)
        if p.xticks:
            ax.set_xticks(p.xticks)
            ax.set_xticklabels([f"{x:g}" for x in p.xticks])
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(panels[0].ylabel)
    handles, names = [], []
    for ax in axes[0]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=max(1, min(len(names), 6)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.1 if len(names) <= 6 else 0.15, 1, 1))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recall_vs_bytes(rows, path: str | os.PathLike, *, k: int = 10, title: str = "",
                    note: str = "", skip: tuple[str, ...] = ("rescore",)) -> str:
    """One line per method of recall@``k`` against bytes per vector (log scale), from rows with
    ``method``, ``representation``, ``bytes_per_vector`` and ``recall`` (``{str(k): value}``),
    e.g. :class:`tldr_index.evaluate.EvalRow`; representations containing a word of ``skip``
    (re-ranked searches, which also read the original vectors) are left out of the first panel.
    When rows hold rescored searches (a representation with ``"rescored"`` / ``"rescore"`` and a
    shortlist, as ``eval`` writes for the target and the codec baselines), a second panel shows
    them, one point per method at its bytes (the first shortlist of each)."""
    panel = Panel(title or f"recall@{k} against bytes per vector", "bytes per vector (log2)",
                  ylabel=f"recall@{k}")
    second = Panel(f"after exact rescoring of a shortlist, recall@{k}",
                   "bytes per vector (log2)", ylabel=f"recall@{k}")
    pts: dict[str, list[tuple[float, float]]] = {}
    resc: dict[str, list[tuple[float, float]]] = {}
    shortlist_of: dict[str, str] = {}
    for r in rows:
        get = r.get if isinstance(r, dict) else lambda a, r=r: getattr(r, a)
        rep, value = get("representation"), get("recall").get(str(k))
        if value is None:
            continue
        if any(word in rep for word in skip):
            if "rescore" in rep:
                method, tail = get("method"), rep[rep.find("(shortlist"):]
                if shortlist_of.setdefault(method, tail) == tail:
                    resc.setdefault(method, []).append((get("bytes_per_vector"), value))
            continue
        pts.setdefault(get("method"), []).append((get("bytes_per_vector"), value))
    for target, src in ((panel, pts), (second, resc)):
        for method, p in src.items():
            p.sort()
            target.series[method] = ([x for x, _ in p], [y for _, y in p])
        ticks = sorted({x for p in src.values() for x, _ in p})
        target.xticks = ticks if len(ticks) <= 10 else None
    return line_panels([panel, second] if resc else [panel], path, note=note)
