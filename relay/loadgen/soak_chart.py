#!/usr/bin/env python3
"""Draws the soak run's samples (relay/loadgen/soak.sh) as one SVG of four stacked panels:
deliveries per second, delivery latency p50 and p99, the relay's RSS and open files, and
the queue depths (the writer's queue and the envelopes waiting in mailboxes).

    soak_chart.py soak.csv soak.svg [title]

Standard library only. Each panel's y axis starts at 0, so flat lines read as flat.
"""

import csv
import sys
from html import escape

W, PANEL_H, LEFT, RIGHT, TOP, GAP = 900, 170, 80, 150, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1.0
    p = 10 ** (len(str(int(v))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= v:
            return m * p
    return 10 * p


def panel(out, y0, title, t, series, unit):
    """One panel: series is [(label, values)], drawn over t."""
    x_max = max(t) if t else 1
    y_max = nice_max(max((max(v) for _, v in series if v), default=1) * 1.05)
    plot_w = W - LEFT - RIGHT
    out.append(f'<text x="{LEFT}" y="{y0 - 8}" font-size="13" font-weight="bold">{escape(title)}</text>')
    out.append(f'<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = y_max * i / 4
        y = y0 + PANEL_H - PANEL_H * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        label = f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{label}</text>')
    out.append(
        f'<text x="{LEFT - 60}" y="{y0 + PANEL_H / 2}" font-size="11" '
        f'transform="rotate(-90 {LEFT - 60} {y0 + PANEL_H / 2})" text-anchor="middle">{escape(unit)}</text>'
    )
    for i in range(6):
        x = LEFT + plot_w * i / 5
        out.append(f'<line x1="{x:.1f}" y1="{y0 + PANEL_H}" x2="{x:.1f}" y2="{y0 + PANEL_H + 4}" stroke="#999"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y0 + PANEL_H + 16}" font-size="11" text-anchor="middle">{x_max * i / 5:.0f}</text>'
            if x_max >= 5
            else f'<text x="{x:.1f}" y="{y0 + PANEL_H + 16}" font-size="11" text-anchor="middle">{x_max * i / 5:.1f}</text>'
        )
    for k, (label, values) in enumerate(series):
        pts = " ".join(
            f"{LEFT + plot_w * x / x_max:.1f},{y0 + PANEL_H - PANEL_H * min(v, y_max) / y_max:.1f}"
            for x, v in zip(t, values)
        )
        colour = COLOURS[k % len(COLOURS)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(
            f'<text x="{LEFT + plot_w + 10}" y="{y0 + 16 + 16 * k}" font-size="11" fill="{colour}">{escape(label)}</text>'
        )


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: soak_chart.py soak.csv soak.svg [title]")
    rows = list(csv.DictReader(open(sys.argv[1], newline="")))
    if not rows:
        sys.exit("soak_chart.py: no samples")
    title = sys.argv[3] if len(sys.argv) > 3 else "sotto-relay soak"
    t = [float(r["t_s"]) / 60 for r in rows]
    every = (float(rows[1]["t_s"]) - float(rows[0]["t_s"])) if len(rows) > 1 else 10.0
    f = lambda k, scale=1.0: [max(float(r[k]), 0.0) * scale for r in rows]
    panels = [
        ("Deliveries and sends per second", [("delivered/s", f("delivered", 1 / every)), ("sent/s", f("sent", 1 / every))], "per second"),
        ("Delivery latency (send to receipt)", [("p50 ms", f("p50_ms")), ("p99 ms", f("p99_ms"))], "ms"),
        ("Relay memory and files", [("RSS MiB", f("rss_kib", 1 / 1024)), ("open files / 100", f("open_files", 0.01))], "MiB, files/100"),
        ("Queues", [("writer queue", f("write_queue")), ("waiting in mailboxes", f("mailbox_envelopes"))], "envelopes"),
    ]
    height = TOP + len(panels) * (PANEL_H + GAP) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif">',
        f'<rect width="{W}" height="{height}" fill="white"/>',
        f'<text x="{W / 2}" y="22" font-size="15" text-anchor="middle">{escape(title)}</text>',
    ]
    for i, (name, series, unit) in enumerate(panels):
        panel(out, TOP + 18 + i * (PANEL_H + GAP), name, t, series, unit)
    out.append(
        f'<text x="{LEFT + (W - LEFT - RIGHT) / 2}" y="{height - 6}" font-size="11" text-anchor="middle">minutes</text>'
    )
    out.append("</svg>")
    with open(sys.argv[2], "w") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
