/* The Python module stub that lets the library be built and found as an ordinary extension module;
 * its functions are called through ctypes (edgeq.runtime.native). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "edgeq's native int8 kernels; called through ctypes (see edgeq.runtime.native).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&native_module); }
