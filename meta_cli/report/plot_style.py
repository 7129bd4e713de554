"""How `meta-cli report` draws: a distinct style per job however many there are, setting labels
wrapped to fit under a bar, fonts that show the characters of the labels, one PNG writer.

matplotlib is imported by the caller (report) before these run; this module imports it lazily
too, so importing it costs nothing.
"""
from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path
from typing import Any

from meta_cli.atomic import write_atomic
from meta_cli.errors import warn

#: Line styles cycled when there are more series than distinct colours can tell apart.
LINESTYLES = ("-", "--", ":", "-.")
#: Fonts with CJK glyphs that matplotlib may find installed; DejaVu Sans (its default) has none.
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans JP", "Source Han Sans", "IPAGothic",
             "IPAexGothic", "TakaoGothic", "VL Gothic", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Droid Sans Fallback", "Hiragino Sans", "Yu Gothic", "MS Gothic", "Microsoft YaHei",
             "Arial Unicode MS")


def series_styles(count: int) -> list[dict[str, Any]]:
    """`count` plot styles (color, linestyle), no two alike: tab10's colours up to 10 series,
    tab20's up to 20, beyond that colours spread over a perceptual colour map with the line
    style cycling, so job 11 is never drawn as job 1 was."""
    from matplotlib import colormaps

    if count <= 10:
        return [{"color": colormaps["tab10"](i), "linestyle": "-"} for i in range(count)]
    if count <= 20:
        return [{"color": colormaps["tab20"](i), "linestyle": "-"} for i in range(count)]
    colours = max(10, -(-count // len(LINESTYLES)))  # colours per line style
    spread = colormaps["turbo"]
    return [{"color": spread(0.05 + 0.9 * (i % colours) / max(1, colours - 1)),
             "linestyle": LINESTYLES[(i // colours) % len(LINESTYLES)]} for i in range(count)]


def markers(points: int) -> dict[str, Any]:
    """Marker settings for a series of `points` points: a line of one point is invisible, so
    short series get visible markers; long ones small dots."""
    return {"marker": "o", "markersize": 5 if points <= 1 else 3} if points <= 30 else {"marker": "."}


def wrap_label(text: str, width: int = 28, lines: int = 4) -> str:
    """`text` in lines of about `width` characters (long words broken), at most `lines` of
    them, the last ending in '…' when cut: a label that fits under its bar."""
    wrapped = textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def use_fonts() -> None:
    """Let matplotlib fall back to an installed CJK font for glyphs its default lacks."""
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallback = [name for name in CJK_FONTS if name in installed]
    if fallback:
        matplotlib.rcParams["font.family"] = ["sans-serif"]
        matplotlib.rcParams["font.sans-serif"] = [*matplotlib.rcParams["font.sans-serif"], *fallback]


def save_png(figure: Any, path: Path) -> None:
    """The figure as a PNG, written atomically. Characters no installed font has are named in
    one warning (matplotlib warns once per glyph and draws boxes)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    missing = []
    for warning in caught:
        text = str(warning.message)
        if text.startswith("Glyph ") and "missing from font" in text:
            char = chr(int(text.split()[1]))
            if char not in missing:
                missing.append(char)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        warn(f"{path.name}: no installed font has the characters {''.join(missing)}, drawn as boxes; "
             f"install a font that has them (e.g. Noto Sans CJK) and run report again.")
    write_atomic(path, buffer.getvalue())
