"""The report as text: report.md, report.html (one self-contained file, the plots inlined), the terminal
table and report.json's form; the plots themselves are in ``plots``."""
from __future__ import annotations

import base64
import html
import math
from typing import Optional

from edgeq.converter.report.engines import EDGEQ, LITERT
from edgeq.runtime.fileio import finite_for_json

PLOT_FILE = "accuracy_vs_size.png"
LAYER_PLOT_FILE = "layer_sqnr.png"

_METRIC_LABELS = {"top1": "top-1 accuracy", "top1_agreement": "top-1 agreement with float32",
                  "cosine": "cosine similarity", "sqnr_db": "output SQNR (dB)"}


def metric_label(name: str) -> str:
    return _METRIC_LABELS.get(name, name)


def format_number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞ (exact)" if value > 0 else "-∞"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def format_difference(value, shown_beside: str) -> str:
    """A signed difference with as many decimals as the figure it is printed beside ("0.9733" -> "+0.0011")."""
    if value is None or not math.isfinite(value):
        return format_number(value)
    _, dot, decimals = shown_beside.partition(".")
    places = len(decimals) if dot and decimals.isdigit() else 0
    return f"{abs(value) if value == 0 else value:+.{places}f}"  # -0.0033 stays "-0.00"; -0.0 is "+0.00"


def pick_lines(report: dict) -> list:
    """Which variant to choose for a budget: the smallest that keeps float32's headline metric within
    1% of it, the smallest and the fastest of all (on edgeq's runtime)."""
    variants = report["variants"]
    headline, label = report["headline_metric"], metric_label(report["headline_metric"])
    base = variants[0]["accuracy"][EDGEQ][headline] if variants else None
    if base is None or not math.isfinite(base):
        return []
    tolerance = 0.01 * abs(base)
    close = [v for v in variants if v["accuracy"][EDGEQ][headline] >= base - tolerance]
    smallest_close = min(close, key=lambda v: v["size"]["bytes"])
    smallest = min(variants, key=lambda v: v["size"]["bytes"])
    fastest = min(variants, key=lambda v: v["latency_ms"][EDGEQ]["median"])

    def figures(v) -> str:
        accuracy = format_number(v["accuracy"][EDGEQ][headline])
        return (f"{_kib(v['size']['bytes'])}, {v['vs_float32']['size_ratio']:.2f}× float32, {label} {accuracy}, "
                f"Δ {format_difference(v['vs_float32']['score_difference'], accuracy)}, "
                f"{v['latency_ms'][EDGEQ]['median']:.3f} ms")

    lines = [f"Which to pick: the smallest within 1% of float32's {label} is {smallest_close['name']} "
             f"({figures(smallest_close)})."]
    if smallest is not smallest_close:
        lines.append(f"Smallest of all: {smallest['name']} ({figures(smallest)}).")
    lines.append(f"Fastest on edgeq: {fastest['name']} ({figures(fastest)}).")
    return lines


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _mib(memory: Optional[dict], key: str = "model_bytes") -> str:
    if not memory or key not in memory:
        return "–"
    return f"{memory[key] / 2**20:.1f}"


def _growth_cell(memory: Optional[dict]) -> str:
    """What loading and running a variant adds to a fresh process, naming any library it made the runtime
    load: that memory is the runtime's, not the model's."""
    figure = _mib(memory)
    libraries = (memory or {}).get("loaded_libraries") or []
    return f"{figure} (loads {', '.join(libraries)})" if libraries and figure != "–" else figure


def memory_lines(report: dict) -> list:
    """Under the variants table: what its memory columns count, what each runtime costs before any model
    (the same in every variant's process), and which variants make a runtime load a library."""
    fixed = []
    for engine, label in ((EDGEQ, "edgeq"), (LITERT, "LiteRT")):
        figures = sorted(v["memory"][engine]["import_rss_bytes"] for v in report["variants"]
                         if (v["memory"].get(engine) or {}).get("import_rss_bytes"))
        if figures:
            fixed.append(f"{label} {figures[len(figures) // 2] / 2**20:.1f} MiB")
    lines = ["Memory: 'growth' is what loading and running the variant adds to a fresh process (MiB); the "
             "runtime itself, before any model, costs " + (" and ".join(fixed) or "–")
             + " (RSS after its import, not counted in growth)."]
    for v in report["variants"]:
        for engine, memory in v["memory"].items():
            libraries = (memory or {}).get("loaded_libraries") or []
            if libraries:
                cause = f" for the {len(v['float_ops'])} ops it keeps in float" if v.get("float_ops") else ""
                lines.append(f"{v['name']} on {engine} loads {', '.join(libraries)}{cause}: its "
                             f"{_mib(memory)} MiB growth includes that library, a cost of the runtime, not of the model.")
    return lines


def summary_table(report: dict) -> tuple:
    """(header, rows) of the variants table, shared by the Markdown, HTML and terminal outputs."""
    headline = report["headline_metric"]
    label = metric_label(headline)
    header = ["variant", "size", "× float32", "gzip -9", f"{label} (edgeq)", "Δ vs float32",
              f"{label} (LiteRT)", "engines agree", "edgeq ms", "LiteRT ms", "speedup (edgeq)",
              "edgeq growth MiB", "LiteRT growth MiB", "Pareto", "int8 outputs' SQNR"]
    rows = []
    for v in report["variants"]:
        accuracy = format_number(v["accuracy"][EDGEQ][headline])
        lit_accuracy = v["accuracy"].get(LITERT, {}).get(headline)
        agreement = v["engine_agreement"]
        agrees = ("identical" if agreement.get("identical") else "yes") if agreement["ok"] else "**NO**"
        if not agreement["checked"]:
            agrees = "not checked"
        lit_latency = v["latency_ms"].get(LITERT, {}).get("median")
        rows.append([
            v["name"], _kib(v["size"]["bytes"]), f"{v['vs_float32']['size_ratio']:.2f}",
            _kib(v["size"]["gzip_bytes"]), accuracy,
            format_difference(v["vs_float32"]["score_difference"], accuracy), format_number(lit_accuracy), agrees,
            f"{v['latency_ms'][EDGEQ]['median']:.3f}", f"{lit_latency:.3f}" if lit_latency is not None else "–",
            f"{v['vs_float32']['speedup'].get(EDGEQ, float('nan')):.2f}×",
            _growth_cell(v["memory"].get(EDGEQ)), _growth_cell(v["memory"].get(LITERT)), "★" if v["pareto"] else "",
            int8_check_cell(v.get("int8_check")),
        ])
    return header, rows


def int8_check_cell(check: Optional[dict]) -> str:
    """An int8 variant's outputs' SQNR against float, bold and marked when under the threshold."""
    if not check:
        return "–"
    figure = f"{format_number(check['sqnr_db'], 3)} dB"
    return figure if check["passed"] else f"**{figure} < {check['min_sqnr_db']:g}: FAILED**"


def failed_int8_checks(report: dict) -> list:
    """One line per variant whose int8 outputs stay under the SQNR threshold."""
    lines = []
    for v in report["variants"]:
        check = v.get("int8_check")
        if check and not check["passed"]:
            worst = f"; worst layer {check['worst_layer']}" if check.get("worst_layer") else ""
            lines.append(f"{v['name']}: int8 outputs' SQNR {format_number(check['sqnr_db'], 3)} dB, under "
                         f"{check['min_sqnr_db']:g} dB{worst}")
    return lines


def layer_table(report: dict, count: int = 15) -> tuple:
    header = ["tensor", "op", "SQNR dB", "max abs error", "max error / scale"]
    rows = [[e["tensor"], e["op"], format_number(e["sqnr_db"], 3), format_number(e["max_abs_error"], 3),
             f"{e['max_error_in_scales']:.2f}"] for e in report["layer_errors"]["tensors"][:count]]
    return header, rows


def _as_paragraphs(lines: list) -> list:
    return [part for line in lines for part in (line, "")]


def _markdown_table(header: list, rows: list) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _other_metrics(report: dict) -> tuple:
    """Every accuracy figure of every variant on both engines (the table shows the headline only)."""
    names = list(report["variants"][0]["accuracy"][EDGEQ])
    header = ["variant", "engine"] + [metric_label(n) for n in names]
    rows = []
    for v in report["variants"]:
        for engine, metrics in v["accuracy"].items():
            rows.append([v["name"], engine] + [format_number(metrics.get(n)) for n in names])
    return header, rows


def _memory_rows(report: dict) -> tuple:
    header = ["variant", "engine", "runtime MiB (after import)", "growth MiB (loading and running)", "peak RSS MiB",
              "libraries it made the runtime load"]
    rows = []
    for v in report["variants"]:
        for engine, memory in v["memory"].items():
            if memory and "peak_rss_bytes" in memory:
                rows.append([v["name"], engine, _mib(memory, "import_rss_bytes"), _mib(memory),
                             _mib(memory, "peak_rss_bytes"), ", ".join(memory.get("loaded_libraries") or []) or "none"])
            else:
                rows.append([v["name"], engine, "–", (memory or {}).get("error", "not measured"), "–", "–"])
    return header, rows


def _intro_lines(report: dict) -> list:
    ev = report["eval"]
    lines = [
        f"Model `{report['model']['path']}`; eval `{ev['path']}` ({ev['samples']} samples, metric: {ev['metric']}); "
        f"calibration `{report['calibration']['path']}`.",
        "",
        f"Command: `{report['command']}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform")
        + f"; {report['versions']['platform']}.",
    ]
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine['cpus']} CPUs; 1-minute load average {machine['load_average_before_timing']} "
                      f"before and {machine['load_average_after_timing']} after timing (latencies compare "
                      "variants of one report; on a busy machine they are noisy)."]
    if not report["checks"]["ok"]:
        lines += ["", "**Check failed:** " + "; ".join(report["checks"]["problems"])]
    failed = failed_int8_checks(report)
    if failed:
        lines += ["", "**Not to be trusted as is:** " + "; ".join(failed)]
    return lines


def _method_lines(report: dict) -> list:
    return [f"- **{k}**: {v}" for k, v in report["methods"].items()]


def render_markdown(report: dict) -> str:
    header, rows = summary_table(report)
    parts = ["# edgeq report", ""] + _intro_lines(report) + [
        "", "## Variants", "",
        "Size in KiB; Δ is the change of the headline metric against float32; latency is the median in ms; "
        "memory is the growth of a fresh process (MiB, below); ★ marks the Pareto front (smaller and more "
        "accurate is better).", "",
        _markdown_table(header, rows), "",
        *_as_paragraphs(memory_lines(report)),
        *pick_lines(report), "",
        f"![accuracy vs size]({PLOT_FILE})", "",
        "## All accuracy figures", "", _markdown_table(*_other_metrics(report)), "",
        "## Memory", "", _markdown_table(*_memory_rows(report)), "",
    ]
    if report.get("budget_search"):
        search = report["budget_search"]
        parts += ["## Size budget search", "", "Every candidate the search converted and measured "
                  "(drawn on the plot as a path per quantization mode):", "", "```", *search["lines"], "```", "",
                  search["verdict"], ""]
    if report["layer_errors"]["tensors"]:
        lheader, lrows = layer_table(report)
        total = len(report["layer_errors"]["tensors"])
        parts += [
            f"## Per-layer quantization error ({report['layer_errors']['variant']})", "",
            f"SQNR of each int8 tensor against its float twin on the calibration samples, worst first "
            f"({len(lrows)} of {total}; all in report.json). Bar chart: `{LAYER_PLOT_FILE}`, also in report.html.",
            "", _markdown_table(lheader, lrows), "",
        ]
    parts += ["## How it was measured", ""] + _method_lines(report) + [""]
    return "\n".join(parts)


_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px; color: #222; padding: 0 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.pareto td:first-child { font-weight: bold; }
code { background: #f5f5f5; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.fail { color: #b00; font-weight: bold; } img { max-width: 100%; }
"""


def _html_table(header: list, rows: list, row_classes: Optional[list] = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{html.escape(str(c).replace('**', ''))}</td>" for c in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _inline_markdown(text: str) -> str:
    """Escape, then the two bits of Markdown the intro uses: `code` and **bold**."""
    escaped = html.escape(text)
    pieces = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = escaped.split("**")
    return "".join(f'<span class="fail">{p}</span>' if i % 2 else p for i, p in enumerate(pieces))


def render_html(report: dict, plot: bytes, layer_plot: Optional[bytes]) -> str:
    """One file, no scripts and no external resources: styles inline, plots as data: URIs."""
    header, rows = summary_table(report)
    pareto = ["pareto" if v["pareto"] else "" for v in report["variants"]]
    intro = "".join(f"<p>{_inline_markdown(line)}</p>" for line in _intro_lines(report) if line)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>edgeq report</title>", f"<style>{_CSS}</style>", "</head><body>",
        "<h1>edgeq report</h1>", intro,
        "<h2>Variants</h2>",
        "<p>Size in KiB; Δ is the change of the headline metric against float32; latency is the median in ms; "
        "memory is the growth of a fresh process (MiB, below); ★ and bold mark the Pareto front.</p>",
        _html_table(header, rows, pareto),
        *(f"<p>{html.escape(line)}</p>" for line in memory_lines(report) + pick_lines(report)),
        _png_tag(plot, "accuracy vs size"),
        "<h2>All accuracy figures</h2>", _html_table(*_other_metrics(report)),
        "<h2>Memory</h2>", _html_table(*_memory_rows(report)),
    ]
    if report["layer_errors"]["tensors"]:
        lheader, lrows = layer_table(report)
        parts += [f"<h2>Per-layer quantization error ({html.escape(str(report['layer_errors']['variant']))})</h2>",
                  "<p>SQNR of each int8 tensor against its float twin on the calibration samples, worst first.</p>",
                  _png_tag(layer_plot, "per-layer SQNR"), _html_table(lheader, lrows)]
    parts += ["<h2>How it was measured</h2><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in report["methods"].items()]
    parts += ["</ul></body></html>", ""]
    return "\n".join(parts)


def terminal_table(report: dict) -> str:
    header, rows = summary_table(report)
    keep = [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 14]
    cells = [[str(header[i]) for i in keep]] + [[str(r[i]).replace("**", "") for i in keep] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keep))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(table + [""] + pick_lines(report))


def json_ready(report: dict) -> dict:
    """The report as report.json holds it (infinities as null)."""
    return finite_for_json(report)
