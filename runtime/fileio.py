"""Writing output files so that a crash or Ctrl-C never leaves a half-written file behind.

Every file edgeq writes (models, run outputs, reports) goes through ``write_atomic``.
"""
from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Union


def write_atomic(path, data: Union[bytes, str]) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to a temporary file beside ``path``, then rename it
    into place.

    The rename is atomic on POSIX and Windows, so readers see either the old file or the new one;
    on any exception, KeyboardInterrupt included, the temporary file is removed and the old file is
    left as it was. The new file keeps the old one's permissions, or gets the usual ones for a new
    file (0666 less the umask) rather than the private 0600 of a temporary file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:  # name the user's file, not the temporary one beside it
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException as error:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.filename == tmp_name:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    return path


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def finite_for_json(value):
    """``value`` with every non-finite float as None: JSON has no Infinity or NaN, and an exact
    match's SQNR is infinite (the texts say so)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_for_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_for_json(v) for v in value]
    return value
