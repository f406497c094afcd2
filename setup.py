"""The one import package, ``edgeq``: ``edgeq.runtime`` is built from runtime/ and ``edgeq.converter`` from
converter/, so nothing named ``runtime`` or ``converter`` lands at the top of site-packages (both names belong to
other projects). Everything else about the distribution is in pyproject.toml.

The native int8 kernels (runtime/native/src) are an optional extension: where no C compiler is found, or the build
fails, the install goes on and the runtime uses its numpy kernels."""
import os
import sys

from setuptools import Extension, find_packages, setup

SUBPACKAGE_FOLDERS = ("runtime", "converter")
NATIVE_SOURCES = ("module.c", "cpu.c", "qgemm.c", "dwconv.c", "elementwise.c", "threads.c",
                  "quantize.c", "add_int8_simd.c", "dwconv_pairs.c",
                  "output_stage_avx512.c", "lookup_int8.c",
                  "maxpool_int8.c", "dwconv_f32.c", "pool.c", "sgemm.c",
                  "softmax_int8.c", "mean_int8.c", "concat.c", "split.c")


def edgeq_packages():
    found = find_packages(include=[f"{folder}*" for folder in SUBPACKAGE_FOLDERS])
    # edgeq/testing lives inside edgeq/ itself: the referees and model builders tests and scripts share
    return ["edgeq", "edgeq.testing"] + [f"edgeq.{name}" for name in found]


def native_extension():
    if sys.platform == "win32":  # the kernels use GCC/Clang target attributes and pthreads
        compile_args, libraries = [], []
    else:
        # No -march: each variant carries its own target attribute, so the library runs on any CPU of its kind.
        compile_args, libraries = ["-O3", "-std=gnu99", "-fvisibility=hidden"], ["m", "pthread"]
    return Extension(
        "edgeq.runtime.native._kernels",
        sources=[os.path.join("runtime", "native", "src", name) for name in NATIVE_SOURCES],
        depends=[os.path.join("runtime", "native", "src", name) for name in ("native.h", "output_stage.h")],
        extra_compile_args=compile_args,
        libraries=libraries,
        optional=True,
    )


setup(
    packages=edgeq_packages(),
    package_dir={"edgeq": "edgeq", **{f"edgeq.{folder}": folder for folder in SUBPACKAGE_FOLDERS}},
    ext_modules=[native_extension()],
)
