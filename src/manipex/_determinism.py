"""Bit-reproducible numbers: the same maps, attacks and weights whatever the thread count.

A CPU kernel splits its reductions (a convolution's weight gradient over the batch, a matrix
product over its inner dimension) across the intra-op threads, and float addition is not
associative: the same seeded run gives other numbers on 1, 2 or 8 threads (measured on the
default model: its logits, maps and attacks differed in the last bits, and the quick
benchmark's table in the third decimal). Two measures remove that:

* matrix products: MKL's strict reproducible mode, asked for when manipex is imported
  (``MKL_CBWR=AUTO,STRICT``, see :mod:`manipex`; :func:`blas_reproducible` checks it). With
  it, forward passes, maps of every order and attacks are bitwise the same on 1 and 2 threads
  (tested); convolutions' forward and input-gradient kernels already were.
* training: a convolution's weight gradient is still split by thread, so
  :func:`reproducible` trains on one intra-op thread (on CUDA with cuDNN's deterministic
  kernels), then restores what it changed.

What it guarantees: the same bytes for the same code, seed, data and torch build on a CPU of the
same instruction set (``torch.backends.cpu.get_cpu_capability()``), whatever the thread count
or test order, provided manipex was imported before the process's first matrix product (MKL
reads its mode then). Not covered: a torch built without MKL, and the fine-tuning loops
(``manipulate_model``, ``train_robust``), which use every thread. Across instruction sets (AVX2
and AVX-512 kernels round differently) only files carry a model unchanged: that is why the
default model ships its weights (:func:`manipex.models.load_default`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional, Union

import torch

__all__ = ["blas_reproducible", "cpu_capability", "kept_thread_count", "reproducible"]

#: MKL's conditional numerical reproducibility (mkl_cbwr.h): query of the whole mode, STRICT flag.
_MKL_CBWR_ALL, _MKL_CBWR_STRICT = -1, 0x10000


def cpu_capability() -> str:
    """The CPU instruction set torch's kernels use here (``"AVX2"``, ``"AVX512"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch builds
        return "unknown"


def blas_reproducible() -> Optional[bool]:
    """Whether MKL runs in strict reproducible mode (``MKL_CBWR=AUTO,STRICT``, set when manipex
    is imported), so that matrix products give the same bits on any thread count. ``False``:
    MKL ran before manipex was imported and keeps its default mode; ``None``: not known here
    (torch built without MKL, or its MKL does not say)."""
    import ctypes

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    mode = get(_MKL_CBWR_ALL)
    return bool(mode & _MKL_CBWR_STRICT)


@contextmanager
def kept_thread_count() -> Iterator[None]:
    """Within the block the thread count may change (``--threads``, :func:`reproducible`); it is
    set back to what it was afterwards, also after an error."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextmanager
def reproducible(device: Optional[Union[str, torch.device]] = None, enabled: bool = True) -> Iterator[None]:
    """Within the block: one intra-op thread, and on CUDA deterministic cuDNN kernels without
    autotuning. The thread count and cuDNN flags in force before are restored afterwards, also
    after an error. ``enabled=False`` changes nothing (for a caller's ``deterministic`` flag).

    Cost: a training run that used 2 threads takes longer on one
    (measured: README, Measured figures behind the defaults).
    """
    if not enabled:
        yield
        return
    device = torch.device(device) if device is not None else torch.device("cpu")
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with kept_thread_count():
        try:
            if device.type == "cpu":
                torch.set_num_threads(1)
            else:
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
