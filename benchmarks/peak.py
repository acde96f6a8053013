"""This machine's multiply-add ceiling, and what a target speed-up over a peer would need of it.

    python benchmarks/peak.py                                   # the ceilings alone
    python benchmarks/peak.py --bench bench-results/bench.json  # and what 1.2× JAX's scan needs
    python benchmarks/peak.py --bench bench-results/bench.json --target 1.5 --configs S,M

The peak is register-only: 16 independent chains of vector FMAs (a zmm on AVX-512 hosts, a ymm
on AVX2 ones), no memory, built with llvmlite, timed on one thread and on every core at once
(ctypes lets go of the GIL); beside it NumPy's GEMM rate (``bench.gemm_rate``, the rate the
bench's "of GEMM" column divides by). With ``--bench``, a saved ``bench.py`` run: for each
case, the GFLOP/s a step would need to run ``--target`` × faster than JAX's scan, as a share of
that run's GEMM rate and of the peak measured here. A step that also runs Adam, φ and the
records cannot be expected above ~90 % of the peak: OpenBLAS's own GEMM runs at 85–90 % of it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import threading
import time

import llvmlite.binding as llvm
import llvmlite.ir as ir
from bench import CONFIGS, flops_per_step, gemm_rate

from bpdiag._core.gemm import VECTOR_BYTES

CHAINS = 16  # independent accumulators: more than FMA latency × pipes on any x86 core
_KEEP: list = []  # the JIT engines whose code the ctypes functions call


def fma_loop(dtype: str):
    """A ctypes function run(n) doing n rounds of CHAINS vector FMAs of ``dtype``; returns
    (function, flops a round)."""
    scalar = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    lanes = VECTOR_BYTES // (4 if dtype == "float32" else 8)
    vec = ir.VectorType(scalar, lanes)
    module = ir.Module()
    fma = ir.Function(module, ir.FunctionType(vec, [vec] * 3),
                      f"llvm.fma.v{lanes}{'f32' if dtype == 'float32' else 'f64'}")  # fmt: skip
    fn = ir.Function(module, ir.FunctionType(scalar, [ir.IntType(64)]), "run")
    entry, loop, done = (fn.append_basic_block(name) for name in ("entry", "loop", "done"))
    ir.IRBuilder(entry).branch(loop)
    b = ir.IRBuilder(loop)
    i = b.phi(ir.IntType(64))
    i.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
    scale, shift = ir.Constant(vec, [1.0000001] * lanes), ir.Constant(vec, [0.5] * lanes)
    accs = []
    for c in range(CHAINS):
        acc = b.phi(vec)
        acc.add_incoming(ir.Constant(vec, [float(c)] * lanes), entry)
        accs.append(acc)
    new = [b.call(fma, [acc, scale, shift]) for acc in accs]
    for acc, value in zip(accs, new, strict=True):
        acc.add_incoming(value, loop)
    step = b.add(i, ir.Constant(ir.IntType(64), 1))
    i.add_incoming(step, loop)
    b.cbranch(b.icmp_unsigned("<", step, fn.args[0]), loop, done)
    b = ir.IRBuilder(done)
    total = new[0]
    for value in new[1:]:  # the sums keep every chain alive
        total = b.fadd(total, value)
    b.ret(b.extract_element(total, ir.Constant(ir.IntType(32), 0)))

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    engine = llvm.create_mcjit_compiler(parsed, target)
    engine.finalize_object()
    _KEEP.append((engine, target))
    ctype = ctypes.c_float if dtype == "float32" else ctypes.c_double
    run = ctypes.CFUNCTYPE(ctype, ctypes.c_int64)(engine.get_function_address("run"))
    return run, 2 * CHAINS * lanes


def peak(dtype: str, threads: int, rounds: int = 2 * 10**7, repeats: int = 5) -> float:
    """GFLOP/s of ``fma_loop`` on ``threads`` threads at once (the best of ``repeats``)."""
    run, flops = fma_loop(dtype)
    run(1000)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=run, args=(rounds,)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return threads * rounds * flops / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", help="a saved bench.py run (JSON)")
    parser.add_argument("--target", type=float, default=1.2, help="speed-up over JAX's scan")
    parser.add_argument("--configs", default="L,XL", help="the bench's cases to look at")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    if args.target <= 0:
        raise SystemExit(f"--target: {args.target}; a speed-up must be > 0")
    cores = os.cpu_count() or 1
    ceilings = {}
    print(
        f"{'dtype':8} {'one core':>10} {f'{cores} cores':>10} {'NumPy GEMM':>11} {'GEMM/peak':>10}"
    )
    for dtype in ("float32", "float64"):
        one, every, blas = peak(dtype, 1), peak(dtype, cores), gemm_rate(dtype)
        ceilings[dtype] = every
        print(f"{dtype:8} {one:10.0f} {every:10.0f} {blas:11.0f} {blas / every:10.0%}  GFLOP/s")
    if not args.bench:
        return
    with open(args.bench) as f:
        run = json.load(f)
    print(f"\n{args.bench} ({run['date']}): a step {args.target}× faster than JAX's scan needs")
    print(f"{'case':24} {'JAX scan ms':>11} {'bpdiag ms':>10} {'needs GFLOP/s':>14} "
          f"{'of its GEMM':>12} {'of peak':>8} {'bpdiag of peak':>15}")  # fmt: skip
    for s in run["steps"]:
        if s["config"] not in configs or not math.isfinite(s.get("jax_scan_ms") or math.nan):
            continue  # not asked for, or JAX was not there
        flops = flops_per_step(s["config"])
        need = flops * args.target / (s["jax_scan_ms"] / 1e3) / 1e9
        have = flops / (s["bpdiag_ms"] / 1e3) / 1e9
        case = f"{s['config']} {s['activation']} {s['dtype']}"
        print(f"{case:24} {s['jax_scan_ms']:11.3f} {s['bpdiag_ms']:10.3f} {need:14.0f} "
              f"{need / run['gemm_gflops'][s['dtype']]:12.0%} {need / ceilings[s['dtype']]:8.0%} "
              f"{have / ceilings[s['dtype']]:15.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
