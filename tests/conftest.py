"""Fixtures shared by the test modules."""
import pytest

from edgeq.runtime.kernels import compiled


@pytest.fixture(params=["numpy", "compiled"])
def kernel_path(request, monkeypatch):
    """Kernels prepared inside the test use the numpy path, then the compiled (numba) one."""
    if request.param == "compiled" and not compiled.available():
        pytest.skip("numba is not installed (pip install edgeq[fast])")
    monkeypatch.setattr(compiled, "ENABLED", request.param == "compiled")
    return request.param
