"""One self-contained HTML page: inline CSS, figures as base64 PNG ``data:`` URIs, no other assets."""
from __future__ import annotations

import base64
import datetime
import html
import math

from . import figures
from ..rundir import BEST
from .runs import COST_KEYS, Group, Run, same_file

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}.muted{color:#6b7280;font-size:13px}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0}th,td{padding:5px 10px;border-bottom:1px solid #e5e7eb;text-align:right}
th{background:#f3f4f6;font-weight:600}td:first-child,th:first-child,.t{text-align:left}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:9px;background:#e5e7eb;margin-left:6px}
.badge.complete{background:#d1fae5;color:#065f46}.badge.failed,.badge.running{background:#fee2e2;color:#991b1b}
.warn{background:#fef3c7;border-left:4px solid #f59e0b;padding:8px 12px;font-size:14px}
.grid{display:flex;flex-wrap:wrap;gap:10px}img{max-width:100%;height:auto}
nav a{margin-right:14px;font-size:14px;color:#1f4e9c}code{font-size:12.5px;background:#f3f4f6;padding:1px 4px}
"""


def _e(text) -> str:
    return html.escape(str(text))


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figures.png(fig)).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(key: str, value) -> str:
    if not _num(value):
        return ""
    if key in ("accuracy", "macro_f1", "val_accuracy"):
        return f"{100 * value:.2f}%"
    if key == "params":
        return f"{int(value):,}"
    if key == "macs":
        return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{int(value):,}"
    if key == "onnx_sps_b64":
        return f"{value:,.0f}"
    if key.endswith("_ms") or key.endswith("_ms_b1"):
        return f"{value:.3f}"
    return f"{value:.4g}"


COST_LABELS = {"params": "params", "macs": "MACs / sample", "onnx_ms_b1": "ONNX ms (batch 1)",
               "onnx_sps_b64": "ONNX samples/s (batch 64)", "latency_ms": "eager ms (batch 1)"}


def _cost_rows(runs: list[Run]) -> list[dict]:
    """One row per run with test metrics, plus the teacher of a distill run not given itself."""
    rows = [{"name": r.name, "role": r.role, **r.metrics} for r in runs if r.metrics]
    for run in runs:
        teacher = run.summary.get("teacher")
        if run.kind in ("distill", "auto") and isinstance(teacher, dict) and not any(
                same_file(run.teacher_checkpoint, r.path / BEST) for r in runs):
            rows.append({"name": f"teacher of {run.name}", "role": "teacher", **teacher})
    return rows


def _ratio(teacher: dict, row: dict, key: str, better: str, worse: str) -> str:
    """``teacher[key] / row[key]`` as "N× better" (or "N× worse" when below 1)."""
    a, b = teacher.get(key), row.get(key)
    if not (_num(a) and _num(b) and a > 0 and b > 0):
        return ""
    r = a / b
    return f"{r:.1f}× {better}" if r >= 1 else f"{1 / r:.1f}× {worse}"


def cost_table(runs: list[Run], colors: dict[str, str]) -> str:
    rows = _cost_rows(runs)
    if not rows:
        return '<p class="muted">No run has test metrics (metrics.json).</p>'
    keys = [k for k in COST_KEYS if k in ("params", "macs", "onnx_ms_b1", "latency_ms") or any(k in r for r in rows)]
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    head = ["model", "role", "test accuracy", "macro-F1"] + [COST_LABELS[k] for k in keys]
    if teacher:
        head += ["vs teacher"]
    text = {"role", "vs teacher"}
    out = ["<table><tr>" + "".join(f'<th{" class=t" if h in text else ""}>{_e(h)}</th>' for h in head) + "</tr>"]
    for row in rows:
        color = colors.get(row["name"])
        swatch = f'<span class="swatch" style="background:{color}"></span>' if color else ""
        cells = [swatch + _e(row["name"]), _e(row["role"]), _fmt("accuracy", row.get("accuracy")),
                 _fmt("macro_f1", row.get("macro_f1"))] + [_fmt(k, row.get(k)) for k in keys]
        if teacher:
            if row is teacher:
                cells.append("reference")
            else:
                parts = [_ratio(teacher, row, "params", "fewer params", "more params"),
                         _ratio(teacher, row, "macs", "fewer MACs", "more MACs"),
                         _ratio(teacher, row, "onnx_ms_b1", "faster (ONNX)", "slower (ONNX)"),
                         _ratio(teacher, row, "latency_ms", "faster (eager)", "slower (eager)")]
                acc_t, acc = teacher.get("accuracy"), row.get("accuracy")
                if _num(acc_t) and _num(acc) and acc_t > 0:
                    parts.append(f"{100 * acc / acc_t:.0f}% of its accuracy")
                cells.append("<br>".join(p for p in parts if p))
        out.append("<tr>" + "".join(f'<td{" class=t" if h in text else ""}>{c}</td>' for h, c in zip(head, cells))
                   + "</tr>")
    out.append("</table>")
    out.append('<p class="muted">Test-set metrics from each run\'s metrics.json (cost fields also from a demo '
               'summary.json); a blank cell: not measured for that model. Eager latency is PyTorch at batch 1.</p>')
    return "\n".join(out)


def _group_note(group: Group) -> str:
    s = group.summary
    parts = []
    if s.get("synthetic"):
        parts.append('<p class="warn">These runs used the <b>synthetic</b> fallback data: the numbers are not '
                     'AV-Digits.</p>')
    facts = []
    if s.get("dataset"):
        facts.append(f"dataset <b>{_e(s['dataset'])}</b>" + (" (quick)" if s.get("quick") else ""))
    if "seed" in s:
        facts.append(f"seed {_e(s['seed'])}")
    terms = (s.get("distillation") or {}).get("terms")
    if terms:
        names = ", ".join(f"{t.get('name')}×{t.get('weight', 1)}" for t in terms if isinstance(t, dict))
        facts.append(f"distillation terms: {_e(names)}")
    if _num(s.get("gap_closed")):
        facts.append(f"the distilled student closes <b>{100 * s['gap_closed']:.1f}%</b> of the scratch-to-teacher gap")
    if facts:
        parts.append(f"<p><b>{_e(group.name)}</b>: " + "; ".join(facts) + ".</p>")
    return "\n".join(parts)


#: marks a file as an mmdistill report, which ``report --out`` may replace inside a run directory
GENERATOR = '<meta name="generator" content="mmdistill report">'


def render(runs: list[Run], groups: list[Group], *, title: str = "mmdistill report") -> str:
    colors = {r.name: figures.color(i) for i, r in enumerate(runs)}
    with_history = [r for r in runs if r.history]
    with_confusion = [r for r in runs if isinstance(r.metrics.get("confusion"), list) and r.metrics["confusion"]]
    with_subsets = [r for r in runs if isinstance(r.metrics.get("subsets"), dict) and r.metrics["subsets"]]
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="muted">{len(runs)} run{"s" if len(runs) != 1 else ""}, generated {now}.</p>',
            '<nav><a href="#cost">cost</a><a href="#curves">training curves</a>'
            '<a href="#confusion">confusion &amp; per-class</a>'
            + ('<a href="#subsets">modality subsets</a>' if with_subsets else "") + "</nav>"]
    body += [_group_note(g) for g in groups]
    body.append("<table><tr><th>run</th><th class=t>role</th><th class=t>kind</th><th class=t>status</th>"
                "<th>epochs</th><th class=t>folder</th></tr>")
    for r in runs:
        body.append(f'<tr><td><span class="swatch" style="background:{colors[r.name]}"></span>{_e(r.name)}</td>'
                    f"<td class=t>{_e(r.role)}</td><td class=t>{_e(r.kind)}</td>"
                    f'<td class=t><span class="badge {_e(r.status)}">{_e(r.status)}</span></td>'
                    f"<td>{len(r.history) or ''}</td><td class=t><code>{_e(r.path)}</code></td></tr>")
    body.append("</table>")

    body.append('<h2 id="cost">Cost: teacher vs students</h2>')
    body.append(cost_table(runs, colors))

    body.append('<h2 id="curves">Training curves</h2>')
    if len(with_history) > 1:
        body.append(_img(figures.validation_overlay(with_history, colors), "validation accuracy of every run"))
    if not with_history:
        body.append('<p class="muted">No run has a metrics.jsonl (evaluate runs have no training).</p>')
    for r in with_history:
        body.append(f"<h3>{_e(r.name)} <span class=\"muted\">{_e(r.role)}</span></h3>")
        body.append(_img(figures.curves(r), f"training curves of {r.name}"))

    body.append('<h2 id="confusion">Confusion matrices and per-class accuracy</h2>')
    if with_confusion:
        body.append('<p class="muted">Test set; rows are the true class, columns the prediction; shading is the '
                    'fraction of the row, numbers are counts.</p>')
        body.append('<div class="grid">' + "".join(_img(figures.confusion(r), f"confusion matrix of {r.name}")
                                                  for r in with_confusion) + "</div>")
        k = max(len(r.metrics["confusion"]) for r in with_confusion)
        series = {r.name: (r.metrics.get("per_class_accuracy") or []) + [None] * k for r in with_confusion}
        body.append(_img(figures.grouped_bars([str(c) for c in range(k)], {n: v[:k] for n, v in series.items()},
                                              colors, title="per-class test accuracy (%)", xlabel="class"),
                         "per-class accuracy"))
    else:
        body.append('<p class="muted">No run\'s metrics.json has a confusion matrix (runs written before '
                    'mmdistill recorded it).</p>')

    if with_subsets:
        body.append('<h2 id="subsets">Accuracy by modalities present</h2>')
        names = []
        for r in with_subsets:
            names += [s for s in r.metrics["subsets"] if s not in names]
        series = {r.name: [r.metrics["subsets"].get(s) for s in names] for r in with_subsets}
        body.append('<p class="muted">From <code>mmdistill evaluate --all-subsets</code>: test accuracy with only '
                    'these modalities present, the others absent.</p>')
        body.append(_img(figures.grouped_bars(names, series, colors, title="accuracy (%) by modalities present",
                                              xlabel="modalities present", rotate=len(names) > 4), "subset accuracy"))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{_e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")
