"""What the report builds: the variants of one model, each a way to ship it, and the options that ask
for them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeq.runtime.ir import ModelError


@dataclass(frozen=True)
class VariantSpec:
    """One way to ship the model: the ``convert`` keyword arguments that make it, and a name."""

    name: str
    quantize: str
    calibration_method: Optional[str] = None
    prune_sparsity: Optional[float] = None
    prune_channels: Optional[float] = None
    reconstruct: bool = False
    layer_errors: bool = False  # measure per-tensor error (the int8 minmax variant)

    @property
    def is_int8(self) -> bool:
        return self.quantize == "int8"

    def convert_options(self) -> dict:
        options = {"quantize": self.quantize}
        if self.is_int8:
            options["calibration_method"] = self.calibration_method
            options["debug"] = self.layer_errors
        if self.prune_sparsity is not None:
            options["prune_sparsity"] = self.prune_sparsity
            options["reconstruct"] = self.reconstruct  # explicit: the variant's name says which it is
        if self.prune_channels is not None:
            options["prune_channels"] = self.prune_channels
            options["reconstruct"] = self.reconstruct  # explicit: the variant's name says which it is
        return options


def _percent(fraction: float) -> str:
    """0.5 -> "50": names become file names, so no "%" or "." in them."""
    return f"{fraction * 100:g}".replace(".", "p")


def plan_variants(methods=("minmax",), prune_sparsities=(), prune_channels=(), reconstruct=None) -> list:
    """The variants to build, float32 first: it is the reference that fidelity is measured against.

    Pruned variants are full int8 calibrated with the first method asked for; ``reconstruct`` (a
    least-squares refit on the calibration samples) applies to every pruned one. As for convert, it is on
    unless turned off (``False``): a report always has calibration samples, and channels removed (or 70% of
    the weights zeroed) without a refit leave a model that barely beats chance.
    """
    from edgeq.converter.api import CALIBRATION_METHODS

    methods = list(methods) or ["minmax"]
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if unknown:
        raise ModelError(f"unknown calibration method(s) {', '.join(unknown)}; choose from {', '.join(CALIBRATION_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ModelError(f"calibration method listed twice in {','.join(methods)}")
    specs = [VariantSpec("float32", "none"), VariantSpec("float16", "float16"), VariantSpec("dynamic-int8", "dynamic")]
    debug_method = "minmax" if "minmax" in methods else methods[0]
    specs += [VariantSpec(f"int8-{m}", "int8", m, layer_errors=(m == debug_method)) for m in methods]
    if reconstruct and not (prune_channels or prune_sparsities):  # asked for explicitly
        raise ModelError("--reconstruct refits the layers pruning changed: it needs --prune-channels or "
                         "--prune-sparsity")
    reconstruct = reconstruct is not False
    suffix = "-reconstruct" if reconstruct else ""
    for sparsity in prune_sparsities:
        specs.append(VariantSpec(f"int8-sparse{_percent(sparsity)}{suffix}", "int8", methods[0],
                                 prune_sparsity=sparsity, reconstruct=reconstruct))
    for channels in prune_channels:
        specs.append(VariantSpec(f"int8-channels{_percent(channels)}{suffix}", "int8", methods[0],
                                 prune_channels=channels, reconstruct=reconstruct))
    return specs


def parse_fractions(text: Optional[str], option: str) -> list:
    """``"0.5,0.7"`` -> ``[0.5, 0.7]``; each strictly between 0 and 1."""
    if not text:
        return []
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ModelError(f"{option}: '{part}' is not a number (expected fractions like 0.5,0.7)") from None
        if not 0.0 < value < 1.0:
            raise ModelError(f"{option}: {value:g} is not a fraction between 0 and 1 (exclusive)")
        values.append(value)
    return values

