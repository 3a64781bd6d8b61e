"""The one table the benchmark prints: each figure beside its same-run baseline and the issue's target."""
from dataclasses import dataclass


@dataclass
class Row:
    figure: str
    result: str
    baseline: str = ""
    target: str = ""


def render(rows):
    """A Markdown table (so it can be pasted into docs/performance.md as it is)."""
    header = Row("figure", "result", "baseline (same run)", "target")
    cells = [[r.figure, r.result, r.baseline, r.target] for r in [header, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = lambda c: "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells[1:])])


def ms(value):
    return "-" if value is None else f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def per_s(value):
    return f"{value:,.0f}/s"


def mb(value):
    return "-" if value is None else f"{value:.0f} MB"
