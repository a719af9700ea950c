#!/usr/bin/env python3
"""Draws the process networks of the patterns chapter as SVG: processes as boxes, channels as
arrows labelled with the channel's name. Each network below mirrors the example named in its
comment. Run `python3 book/diagrams/make.py` to regenerate book/src/*.svg."""
import math
import os

W, H = 130, 44  # box size


def svg(name, width, height, nodes, edges, note=None):
    """nodes: {id: (label, cx, cy)}; edges: [(from, to, label, dy, dashed[, pos])], where dy
    shifts an edge down (a return arrow beside its request) and pos (0.5 if absent) is where
    along the arrow its label sits."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#333"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for a, b, label, dy, dashed, *pos in edges:
        pos = pos[0] if pos else 0.5
        (_, x1, y1), (_, x2, y2) = nodes[a], nodes[b]
        y1, y2 = y1 + dy, y2 + dy
        dx, dyy = x2 - x1, y2 - y1
        # leave the source box and enter the target box at their borders
        def clip(dx, dy):
            tx = (W / 2) / abs(dx) if dx else math.inf
            ty = (H / 2) / abs(dy) if dy else math.inf
            return min(tx, ty)
        t = clip(dx, dyy)
        sx, sy = x1 + dx * t, y1 + dyy * t
        ex, ey = x2 - dx * t, y2 - dyy * t
        dash = ' stroke-dasharray="5,4"' if dashed else ''
        out.append(
            f'<line x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke="#333" '
            f'stroke-width="1.5" marker-end="url(#arrow)"{dash}/>'
        )
        if label:
            mx, my = sx + (ex - sx) * pos, sy + (ey - sy) * pos
            ly = my + 16 if dy > 0 else my - 6  # a return arrow's label goes below it
            out.append(
                f'<text x="{mx:.1f}" y="{ly:.1f}" text-anchor="middle" fill="#05a" '
                f'font-family="monospace" font-size="12">{label}</text>'
            )
    for label, cx, cy in nodes.values():
        out.append(
            f'<rect x="{cx - W / 2}" y="{cy - H / 2}" width="{W}" height="{H}" rx="6" '
            f'fill="#eef4fb" stroke="#333" stroke-width="1.5"/>'
        )
        out.append(
            f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-family="monospace">'
            f'{label}</text>'
        )
    if note:
        out.append(f'<text x="10" y="{height - 10}" fill="#555" font-size="12">{note}</text>')
    out.append('</svg>')
    path = os.path.join(os.path.dirname(__file__), '..', 'src', name)
    with open(path, 'w') as f:
        f.write('\n'.join(out) + '\n')


# examples/pipeline.rs
svg('pipeline.svg', 820, 110, {
    'n': ('numbers', 80, 50), 's': ('square', 290, 50),
    'r': ('running_sum', 500, 50), 'c': ('collect', 710, 50),
}, [
    ('n', 's', '"numbers"', 0, False), ('s', 'r', '"squares"', 0, False),
    ('r', 'c', '"sums"', 0, False),
], note='each stage returns when its input retires, which retires its output')

# examples/primes.rs
svg('farm.svg', 520, 260, {
    'f': ('farmer', 90, 120),
    'w0': ('worker 0', 420, 40), 'w1': ('worker 1', 420, 120), 'w2': ('worker 2', 420, 200),
}, [
    ('f', 'w0', '', 0, False), ('f', 'w1', '"jobs"', 0, False), ('f', 'w2', '', 0, False),
], note='one any-to-any channel: each range reaches exactly one worker')

# examples/server.rs
svg('server.svg', 620, 300, {
    'c0': ('client 0', 90, 40), 'c1': ('client 1', 90, 140), 'c2': ('client 2', 90, 240),
    's': ('server', 540, 140),
}, [
    ('c0', 's', '"request-0"', -8, False, 0.3), ('s', 'c0', '"reply-0"', 8, False, 0.7),
    ('c1', 's', '"request-1"', -8, False, 0.3), ('s', 'c1', '"reply-1"', 8, False, 0.7),
    ('c2', 's', '"request-2"', -8, False, 0.3), ('s', 'c2', '"reply-2"', 8, False, 0.7),
], note='the server chooses among the requests with fair_select')

# examples/fan_out_in.rs
svg('fan-out-in.svg', 940, 270, {
    'sensor': ('sensor', 80, 125), 'delta': ('delta', 320, 125),
    'min': ('reducer(Min)', 570, 40), 'max': ('reducer(Max)', 570, 125),
    'sum': ('reducer(Sum)', 570, 210), 'g': ('gather', 850, 125),
}, [
    ('sensor', 'delta', '"readings"', 0, False),
    ('delta', 'min', '"copy-0"', 0, False), ('delta', 'max', '"copy-1"', 0, False),
    ('delta', 'sum', '"copy-2"', 0, False),
    ('min', 'g', '', 0, False), ('max', 'g', '"results"', 0, False), ('sum', 'g', '', 0, False),
], note='fan-out: delta copies each value to every output; fan-in: three writers share "results"')
