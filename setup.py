"""The one import package, ``edgeq``: ``edgeq.runtime`` is built from runtime/ and ``edgeq.converter`` from
converter/, so nothing named ``runtime`` or ``converter`` lands at the top of site-packages (both names belong to
other projects). Everything else about the distribution is in pyproject.toml."""
from setuptools import find_packages, setup

SUBPACKAGE_FOLDERS = ("runtime", "converter")


def edgeq_packages():
    found = find_packages(include=[f"{folder}*" for folder in SUBPACKAGE_FOLDERS])
    return ["edgeq"] + [f"edgeq.{name}" for name in found]


setup(
    packages=edgeq_packages(),
    package_dir={"edgeq": "edgeq", **{f"edgeq.{folder}": folder for folder in SUBPACKAGE_FOLDERS}},
)
