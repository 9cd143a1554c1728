"""Plain-text output shared by the commands: aligned tables and metric values."""

from __future__ import annotations


def table(rows: list[list[str]], header: list[str]) -> str:
    """``rows`` under ``header`` in left-aligned columns, with a dashed rule below the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def fmt(value: float | None) -> str:
    """A metric with four decimals; ``—`` where it is undefined."""
    return "—" if value is None else f"{value:.4f}"
