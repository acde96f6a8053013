"""The jitted backprop core: every ``@njit`` kernel, knowing only NumPy and Numba.

- ``structs``: the named tuples the kernels take (the net's layout, a batch's scratch, the
  training setup, the records) and the layout conventions;
- ``codes``, ``slots``: the integers that steer the kernels and the slots of their records;
- ``forward``, ``backward``, ``norm``, ``update``, ``stats``: one thread's passes of a training
  step (``norm``: BatchNorm, LayerNorm and the residual branch);
- ``parallel``: the same passes over Numba's threads; ``loop``: the chunked training loop;
- ``elementwise``, ``vmath``, ``gemm``, ``jit``: activations, vectorizable math, the matrix
  product (bound to a BLAS by ``bpdiag.blas``) and the Numba flags, defined once.

``gemm`` also uses llvmlite, to call the BLAS by symbol name from compiled code.
"""
