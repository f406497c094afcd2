"""Fixtures shared by the test modules."""
import pytest

from edgeq.runtime import native

# Every native variant this machine runs (x86-64: avx512vnni, avxvnni, avx2, portable where the CPU
# has them); one skipped entry where the extension is not built.
NATIVE_PATHS = [f"native-{isa}" for isa in native.supported_isas()] or ["native"]


@pytest.fixture(params=["numpy"] + NATIVE_PATHS)
def kernel_path(request, monkeypatch):
    """Kernels prepared inside the test use the numpy path, then each native variant."""
    path = request.param
    if path == "native":
        pytest.skip(f"no native kernels: {native.describe()}")
    monkeypatch.setattr(native, "ENABLED", path.startswith("native-"))
    if path.startswith("native-"):
        monkeypatch.setattr(native, "_isa", path[len("native-"):])
    return path
