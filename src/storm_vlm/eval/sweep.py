"""Frame sweeps: accuracy vs input frames per configuration, as a table and a plot."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_lines", "sweep_table"]


def sweep_table(points: dict[str, list[tuple[int, float | None, float | None]]]) -> str:
    """Markdown: one row per configuration, one column per frame count (accuracy %, tokens)."""
    frames = sorted({f for rows in points.values() for f, _, _ in rows})
    lines = ["| configuration | " + " | ".join(f"{f} frames" for f in frames) + " |"]
    lines.append("|---|" + "---|" * len(frames))
    for label, rows in points.items():
        cell = {f: (acc, tok) for f, acc, tok in rows}
        cells = []
        for f in frames:
            acc, tok = cell.get(f, (None, None))
            cells.append("—" if acc is None else f"{100 * acc:.1f}% ({tok:.0f} tok)" if tok else f"{100 * acc:.1f}%")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_lines(
    lines: dict[str, list[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str = "accuracy (%)",
    title: str = "",
    log_x: bool = True,
    chance: float | None = None,
) -> Path:
    """One line per label of (x, y) points, saved as PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, pts in lines.items():
        pts = sorted(p for p in pts if p[1] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
