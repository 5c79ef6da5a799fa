"""Printing helpers shared by the benchmark scripts: one table, then ratio lines."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["print_ratio", "print_table"]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_ratio(name: str, value: float, goal: float | None = None, higher_is_better: bool = True) -> None:
    verdict = ""
    if goal is not None:
        ok = value >= goal if higher_is_better else value <= goal
        verdict = f"  (goal {'>=' if higher_is_better else '<='} {goal}: {'met' if ok else 'NOT met'})"
    print(f"ratio {name}: {value:.3f}{verdict}")
