"""Small pieces of the text renderings (`text()`) that tool results give a reader."""

from collections.abc import Sequence


def table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows of cells as aligned columns, two spaces apart; columns listed in `right` (numbers)
    are right-aligned. Trailing blanks are trimmed."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 file', '3 files'."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def number(value: float | None, digits: int = 6) -> str:
    """A metric as a person reads it: whole numbers whole, others to `digits` significant
    digits (large ones to the unit, never in exponent form), '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def as_block(text: str) -> str:
    """Text (a diff, a log) to follow a header line: without its final newline, nothing else trimmed."""
    return text[:-1] if text.endswith("\n") else text
