"""The pipeline's compiled kernels: ahead of time on the gateway, Numba's JIT on the desk.

Kernel modules decorate their ``@njit``-style functions with :func:`kernel` (called from Python,
exported by the ahead-of-time build with one signature) or :func:`jit` (helpers, desk-only
kernels). See ``edge_agent.kernels.dispatch`` for how the backend is chosen,
``edge_agent.kernels.signature`` for the signature notation and the argument guards,
``edge_agent.kernels.bind`` for the hot path's calls (fixed arguments checked once), and
``edge_agent.kernels.build`` (``scripts/build-kernels``) for the build.
``python -m edge_agent.kernels`` says which backend this process would use.
"""

from edge_agent.kernels.bind import CALL, bind
from edge_agent.kernels.dispatch import (
    Backend,
    KernelsUnavailable,
    backend,
    jit,
    kernel,
    require,
)
from edge_agent.kernels.signature import KernelArgumentError

__all__ = [
    "CALL",
    "Backend",
    "KernelArgumentError",
    "KernelsUnavailable",
    "backend",
    "bind",
    "jit",
    "kernel",
    "require",
]
