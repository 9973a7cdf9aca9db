"""Per-layer summaries of a converted net: a printed table and a JSON form."""

from __future__ import annotations

import math
from typing import Any

from .graph import CaffeNet


def layer_rows(net: CaffeNet) -> list[dict[str, Any]]:
    """One dict per layer: name, type, bottoms, tops with shapes, parameter shapes and count."""
    rows = []
    for name, shape in net.input_shapes.items():
        rows.append({
            "name": name, "type": "Input", "bottoms": [],
            "tops": [{"name": name, "shape": list(shape) if shape else None}],
            "params": [], "param_count": 0,
        })  # fmt: skip
    for step, module in net.named_layers():
        params = [list(s) for s in module.blob_shapes()]
        count = sum(math.prod(s) for s in params)
        rows.append({
            "name": step.name,
            "type": step.type,
            "bottoms": list(step.bottoms),
            "tops": [{"name": t, "shape": list(net.blob_shapes[t])} for t in step.tops],
            "params": params,
            "param_count": count,
        })
    return rows


def summary_dict(net: CaffeNet) -> dict[str, Any]:
    rows = layer_rows(net)
    return {
        "name": net.net_param.name,
        "phase": net.phase,
        "written_for": net.dialect.fork,
        "inputs": {k: list(v) if v else None for k, v in net.input_shapes.items()},
        "outputs": net.output_names,
        "layers": rows,
        "total_params": sum(r["param_count"] for r in rows),
    }


def format_table(net: CaffeNet) -> str:
    rows = layer_rows(net)
    lines = []
    header = ("layer", "type", "top shape", "params")
    table = [header]
    for r in rows:
        tops = ", ".join(f"{t['name']} {'x'.join(map(str, t['shape'])) if t['shape'] else '?'}"
                         if t["name"] != r["name"] or len(r["tops"]) > 1 else
                         ("x".join(map(str, t["shape"])) if t["shape"] else "?")
                         for t in r["tops"])  # fmt: skip
        table.append((r["name"], r["type"], tops or "-", f"{r['param_count']:,}" if r["param_count"] else ""))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for i, row in enumerate(table):
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}")
        if i == 0:
            lines.append("-" * len(lines[0]))
    total = sum(r["param_count"] for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{len(net.steps)} layers, {total:,} parameters ({total * 4 / 2**20:.1f} MiB as float32), "
        f"phase {net.phase}, outputs: {', '.join(net.output_names) or '-'}"
    )
    lines.append(f"written for: {net.dialect.describe()}")
    return "\n".join(lines)
