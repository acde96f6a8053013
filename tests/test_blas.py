"""Which BLAS the kernels use: chosen on first use (not at import), named as threadpoolctl reads
it, the right one for the machine, and held to one thread where asked."""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpdiag import blas


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "BPDIAG_BLAS"}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env},
                          capture_output=True, text=True)  # fmt: skip


def test_importing_bpdiag_binds_no_blas():
    """``import bpdiag`` (and building a net) loads no BLAS and binds nothing; training does."""
    code = """if True:
        import json, sys
        from pathlib import Path
        import numpy as np
        import bpdiag
        from bpdiag import blas
        net = bpdiag.MLP([3, 4, 1])
        mkl = blas._mkl_library()
        maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
        before = [blas.bound(), bool(mkl) and str(mkl) in maps,
                  "scipy.linalg.cython_blas" in sys.modules]
        bpdiag.train(net, np.zeros((4, 3)), np.zeros((4, 1)), steps=1)
        print(json.dumps({"before": before, "after": str(blas.bound())}))
    """
    res = _python(code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["before"] == [None, False, False]
    assert out["after"].split()[0] in blas.BACKENDS


def _library_of(address: int) -> Path:
    """The shared object that holds ``address`` (dladdr)."""

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]  # fmt: skip

    info = DlInfo()
    assert ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info))
    return Path(info.dli_fname.decode()).resolve()


def test_the_named_library_is_the_one_bound():
    """The reported library is a real loaded BLAS with a version, and the symbol the kernels
    call resolves to code in it (MKL) or in SciPy's BLAS wrapper over it (OpenBLAS)."""
    import llvmlite.binding as llvm
    from threadpoolctl import threadpool_info

    from bpdiag._core.gemm import SYMBOLS

    lib = blas.bind()
    loaded = {Path(i["filepath"]).resolve(): i for i in threadpool_info()}
    assert Path(lib.path) in loaded and loaded[Path(lib.path)]["internal_api"] == lib.backend
    assert lib.version != "unknown" and lib.version in str(lib)
    holder = _library_of(llvm.address_of_symbol(SYMBOLS["dgemm"]))
    if lib.backend == "mkl":
        assert holder.name.startswith("libmkl")
    else:
        import scipy.linalg.cython_blas

        assert holder == Path(scipy.linalg.cython_blas.__file__).resolve()


def test_mkl_on_intel_openblas_elsewhere():
    """The vendor rule: MKL where it is installed, the CPU is Intel's and PyTorch cannot be
    bound to it afterwards; SciPy's OpenBLAS otherwise."""
    expect_mkl = (blas._mkl_library() is not None and blas._intel_cpu()
                  and importlib.util.find_spec("torch") is None)  # fmt: skip
    res = _python("from bpdiag import blas; print(blas.bind().backend)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("mkl" if expect_mkl else "openblas")


@pytest.mark.skipif(blas._mkl_library() is None, reason="mkl is not installed")
@pytest.mark.skipif(not blas._intel_cpu(), reason="MKL is the default on Intel CPUs only")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
@pytest.mark.parametrize(("torch_first", "backend"), [(True, "mkl"), (False, "openblas")])
def test_mkl_only_where_pytorch_is_bound_already(torch_first, backend):
    """Loaded before PyTorch, MKL's parts would take over the MKL inside PyTorch."""
    code = "from bpdiag import blas; print(blas.bind().backend)"
    res = _python(f"import torch; {code}" if torch_first else code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == backend


@pytest.mark.parametrize("backend", blas.BACKENDS)
def test_the_override_is_obeyed(backend):
    if backend == "mkl" and blas._mkl_library() is None:
        pytest.skip("mkl is not installed")
    res = _python("from bpdiag import blas; print(blas.bind().backend)", BPDIAG_BLAS=backend)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == backend


def test_bad_backend_is_refused_at_first_use():
    res = _python("import bpdiag; from bpdiag import blas; blas.bind()", BPDIAG_BLAS="atlas")
    assert res.returncode != 0
    assert "BPDIAG_BLAS must be one of mkl, openblas, got 'atlas'" in res.stderr


def test_warm_runs_once_per_thread_count_and_leaves_the_threads_as_they_were():
    """``warm`` runs its product on every thread asked for, once (again only for more threads),
    for OpenBLAS alone, and hands back Numba's and the BLAS's thread counts unchanged; training
    warms the threads it uses."""
    code = """if True:
        import json, numba
        import numpy as np
        from pathlib import Path
        from threadpoolctl import threadpool_info
        import bpdiag
        from bpdiag import blas
        lib = blas.bind()
        def counts():
            mine = [i["num_threads"] for i in threadpool_info()
                    if Path(i["filepath"]).resolve() == Path(lib.path)]
            return [numba.get_num_threads(), mine]
        before = counts()
        seen = []
        for step in ("train 1", "warm 1", "train 2", "warm 1", "warm 2"):
            what, n = step.split()
            if what == "warm":
                blas.warm(int(n))
            else:
                bpdiag.train(bpdiag.MLP([3, 4, 1]), np.zeros((4, 3)), np.zeros((4, 1)),
                             steps=1, threads=int(n))
            seen.append(blas._warmed)
        after = counts()
        print(json.dumps({"backend": lib.backend, "seen": seen, "before": before,
                          "after": after}))
    """
    res = _python(code, NUMBA_NUM_THREADS="2")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["before"] == out["after"]
    assert out["seen"] == ([1, 1, 2, 2, 2] if out["backend"] == "openblas" else [0] * 5)
