"""The daily energy chart of an invoice as a small SVG: energy delivered to the community as bars
up, energy bought from it as bars down, on one kWh scale, one bar per day of the period.

Drawn as a plain string (no browser); every text is XML-escaped and every value is checked, so
any input gives a well-formed drawing.
"""
from __future__ import annotations

import math
from datetime import date, timedelta
from xml.sax.saxutils import escape, quoteattr

IMPORT_COLOUR = "#2f6db5"
EXPORT_COLOUR = "#e39b1b"
AXIS_COLOUR = "#555555"
GRID_COLOUR = "#d8d8d8"
FONT = "DejaVu Sans, sans-serif"
MAX_DAYS = 400  # a longer range is drawn without the days beyond it
MAX_KWH = 1e9   # a day's value is capped here, so sums stay finite

# drawing units: 4 per mm
UNITS_PER_MM = 4


def _value(v) -> float:
    """A bar's height in kWh: negative, NaN, infinite or non-numeric values count as 0."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return min(x, MAX_KWH) if math.isfinite(x) and x > 0 else 0.0


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= x (x > 0)."""
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        v = m * 10 ** exp
        if v >= x * (1 - 1e-12):
            return v
    return 10 ** (exp + 1)


def _fmt(v: float, number_format) -> str:
    if number_format is not None:
        return number_format(v)
    return f"{v:g}"


def daily_chart_svg(daily, start: date, end: date, *, import_label: str = "bought",
                    export_label: str = "delivered", unit: str = "kWh", no_data_label: str = "No data",
                    number_format=None, width_mm: float = 120.0, height_mm: float = 44.0) -> str:
    """The chart as an SVG document string.

    ``daily`` holds ``(day, imported_kwh, exported_kwh)``; days outside ``start..end`` (inclusive)
    are left out, a day given twice is summed. ``number_format(value) -> str`` formats the axis
    values (the locale's digits); the labels are plain text.
    """
    u = UNITS_PER_MM
    W, H = width_mm * u, height_mm * u
    if not isinstance(start, date) or not isinstance(end, date) or end < start:
        start = end = start if isinstance(start, date) else date(2000, 1, 1)
    n_days = min((end - start).days + 1, MAX_DAYS)

    imp = [0.0] * n_days
    exp = [0.0] * n_days
    any_data = False
    for row in daily or ():
        try:
            day, i_kwh, e_kwh = row
        except (TypeError, ValueError):
            continue
        if not isinstance(day, date):
            continue
        k = (day - start).days
        if 0 <= k < n_days:
            imp[k] += _value(i_kwh)
            exp[k] += _value(e_kwh)
            any_data = True

    font_size = 2.6 * u
    left, right = 15 * u, 2 * u         # room for the kWh labels
    top, bottom = 6.5 * u, 4.5 * u       # legend above, day numbers below
    plot_w, plot_h = W - left - right, H - top - bottom

    max_up, max_down = nice_ceiling(max(exp)), nice_ceiling(max(imp))
    total = max_up + max_down
    if total <= 0:
        zero_y = top + plot_h / 2
        scale = 0.0
    else:
        zero_y = top + plot_h * max_up / total
        scale = plot_h / total

    out: list[str] = []
    add = out.append
    add('<svg xmlns="http://www.w3.org/2000/svg" version="1.1" '
        f'width="{width_mm:g}mm" height="{height_mm:g}mm" viewBox="0 0 {W:g} {H:g}" '
        f'font-family={quoteattr(FONT)} font-size="{font_size:g}">')

    # legend
    lx = left
    for colour, label in ((EXPORT_COLOUR, export_label), (IMPORT_COLOUR, import_label)):
        add(f'<rect x="{lx:g}" y="{1.2 * u:g}" width="{2.6 * u:g}" height="{2.6 * u:g}" fill="{colour}"/>')
        add(f'<text x="{lx + 3.6 * u:g}" y="{3.6 * u:g}">{escape(str(label))}</text>')
        lx += 3.6 * u + (len(str(label)) * 0.6 + 1.5) * font_size
    add(f'<text x="{W - right:g}" y="{3.6 * u:g}" text-anchor="end" fill="{AXIS_COLOUR}">'
        f'{escape(str(unit))}</text>')

    # grid lines at the top and bottom of the scale, with their values
    for value, y in ((max_up, top), (max_down, top + plot_h)):
        if value > 0:
            add(f'<line x1="{left:g}" y1="{y:g}" x2="{W - right:g}" y2="{y:g}" stroke="{GRID_COLOUR}" '
                f'stroke-width="1"/>')
            if abs(y - zero_y) >= 1.1 * font_size:   # no label on top of the zero's
                add(f'<text x="{left - 1.2 * u:g}" y="{y + font_size * 0.35:g}" text-anchor="end" '
                    f'fill="{AXIS_COLOUR}">{escape(_fmt(value, number_format))}</text>')
    add(f'<text x="{left - 1.2 * u:g}" y="{zero_y + font_size * 0.35:g}" text-anchor="end" '
        f'fill="{AXIS_COLOUR}">{escape(_fmt(0, number_format))}</text>')

    # bars
    slot = plot_w / n_days
    bar_w = max(slot * 0.72, 0.5)
    if scale > 0:
        # one path per colour: a rectangle per day
        up, down = [], []
        for k in range(n_days):
            x = left + k * slot + (slot - bar_w) / 2
            if exp[k] > 0:
                up.append(f"M{x:.2f} {zero_y:.2f}v{-exp[k] * scale:.2f}h{bar_w:.2f}v{exp[k] * scale:.2f}z")
            if imp[k] > 0:
                down.append(f"M{x:.2f} {zero_y:.2f}v{imp[k] * scale:.2f}h{bar_w:.2f}v{-imp[k] * scale:.2f}z")
        for colour, parts in ((EXPORT_COLOUR, up), (IMPORT_COLOUR, down)):
            if parts:
                add(f'<path d="{"".join(parts)}" fill="{colour}"/>')
    if not any_data:
        add(f'<text x="{left + plot_w / 2:g}" y="{zero_y - 1.5 * u:g}" text-anchor="middle" '
            f'fill="{AXIS_COLOUR}">{escape(str(no_data_label))}</text>')

    # zero axis and day numbers
    add(f'<line x1="{left:g}" y1="{zero_y:g}" x2="{W - right:g}" y2="{zero_y:g}" stroke="{AXIS_COLOUR}" '
        f'stroke-width="1.2"/>')
    last = -10
    for k in range(n_days):
        day = start + timedelta(days=k)
        if n_days <= 10:
            show = True
        elif n_days <= 62:
            show = day.day == 1 or day.day % 5 == 0
        else:
            show = day.day == 1
        if show and k - last >= 3:
            last = k
            x = left + (k + 0.5) * slot
            label = str(day.day) if n_days <= 62 else day.strftime("%m.%y")
            add(f'<text x="{x:.2f}" y="{H - 0.8 * u:g}" text-anchor="middle" fill="{AXIS_COLOUR}">'
                f'{label}</text>')
    add("</svg>")
    return "".join(out)
