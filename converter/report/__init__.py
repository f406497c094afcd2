"""The comparison report: build the variants of one model, measure each, write md/html/json/png.

A variant is one way to ship the model (float32, float16, dynamic-range int8, full int8 per calibration
method, int8 after pruning). For each the report measures:

* size: the .tflite file's bytes, and its bytes after ``gzip -9`` (what pruned zeros save in transit);
* accuracy: top-1 when the eval file has labels, else fidelity to the float32 variant (top-1 agreement,
  cosine similarity, SQNR of the outputs), or the user's own metric; computed on edgeq's runtime and
  cross-checked on LiteRT's reference kernels (BUILTIN_REF), where int8 outputs must be identical;
* latency: median of repeated single-sample inferences, one thread, on edgeq's runtime and on LiteRT's
  default kernels, measured one variant at a time in the main process so variants never compete;
* peak memory: a fresh subprocess per engine imports the engine, notes its peak RSS, loads the model,
  runs it once on zeros and notes its peak RSS again; the report gives both and their difference.

The modules, in the order the report runs them:

* ``plan``: which variants to build;
* ``eval_data``: the eval set (through the runtime's loader of user arrays) and a user metric;
* ``measure``: convert each variant and run it on both engines (``engines``) in a process pool, probe
  its memory, then time it, through the runtime's latency-and-memory harness (``edgeq.runtime.measure``);
* ``metrics``: accuracy, fidelity, engine agreement, the Pareto front;
* ``make``: the whole report as one dict, and the report folder;
* ``render`` and ``plots``: report.md, report.html, the terminal table, report.json's form; the PNGs.
"""
from edgeq.converter.report.make import ReportOptions, make_report
from edgeq.converter.report.plan import parse_fractions
from edgeq.converter.report.render import json_ready, terminal_table

__all__ = ["ReportOptions", "json_ready", "make_report", "parse_fractions", "terminal_table"]
