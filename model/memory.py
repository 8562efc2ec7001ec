"""Peak memory of one inference, measured the same way on CPU and CUDA.

Where the allocation window builds (`allocation_window`: torch's allocators report every
allocation and free of this request's work to a per-thread counter), it measures on both
devices: exact to the byte, the buffers inside ops included, per request even when several
run at once, at a few C++ instructions per allocation. Without it (no C++ compiler), CUDA
falls back to the caching allocator's device-wide statistics and the CPU to
`CpuAllocationTracker`, a `TorchDispatchMode` that counts the storages ops return (it sees
what spconv allocates through torch, not the buffers inside ops) at a Python call per op.
All report bytes allocated *during* the measured window: weights and tensors that existed
before it do not count.

`MemoryProbe` adds phases: the model asks how many bytes are live now (to decide how many
sites a memory budget still allows) and how high each phase went.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model import allocation_window
from model.allocation_window import AllocationWindow


def _returns_kind(func) -> str:
    """How an op's outputs relate to its inputs, from its schema: "inplace" (they are
    inputs written in place, or `out=`: nothing new), "fresh" (new storages) or "maybe" (an
    alias of the input, as a view is, or a copy, as `to` and `reshape` may make)."""
    returns = func._schema.returns
    if returns and all(r.alias_info is not None and r.alias_info.is_write for r in returns):
        return "inplace"
    if all(r.alias_info is None for r in returns):
        return "fresh"
    return "maybe"


class CpuAllocationTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages created while the mode is active.

    It runs on every op, so it does as little as it can per op: what an op's outputs are is
    read once from its schema and cached (in-place ops are skipped at once, a fresh output is
    counted without looking at the inputs), and only ops that may or may not alias an input
    compare storages.
    """

    _kinds: ClassVar[dict] = {}

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = self._kinds.get(func)
        if kind is None:
            kind = self._kinds[func] = _returns_kind(func)
        if kind == "inplace":
            return out
        outputs = (out,) if type(out) is torch.Tensor else tree_leaves(out)
        inputs = None
        for leaf in outputs:
            if not isinstance(leaf, torch.Tensor) or leaf.device.type != "cpu":
                continue
            storage = leaf.untyped_storage()
            if kind == "maybe":
                # Views and in-place results share an input's storage: nothing new was
                # allocated, and a finaliser on a long-lived storage (a view of the weights)
                # would never run.
                if inputs is None:
                    inputs = {
                        arg.untyped_storage().data_ptr()
                        for arg in tree_leaves((args, kwargs))
                        if isinstance(arg, torch.Tensor) and arg.device.type == "cpu"
                    }
                if storage.data_ptr() in inputs:
                    continue
            self._track(storage)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        with self._lock:
            if key in self._sizes:
                return
            self._sizes[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            self.live_bytes -= self._sizes.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes


@functools.cache
def windows_count(device_type: str) -> bool:
    """Whether allocation windows measure `device_type` here: the library builds and a window
    sees a known allocation (checked once per process, so a torch whose allocator does not
    report falls back instead of measuring nothing)."""
    if allocation_window.library() is None:
        return False
    with AllocationWindow(device_type) as window:
        probe = torch.empty(1 << 20, dtype=torch.uint8, device=device_type)
        seen = window.peak_bytes
        del probe
    return seen >= 1 << 20 and window.live_bytes == 0


def measurement(device: torch.device | str) -> str:
    """How `MemoryProbe` measures on `device`: "allocation window", "cuda allocator
    statistics" or "dispatch tracker"."""
    device_type = torch.device(device).type
    if windows_count(device_type):
        return "allocation window"
    return "cuda allocator statistics" if device_type == "cuda" else "dispatch tracker"


class CudaAllocatorStatistics:
    """The caching allocator's device-wide counters, from a base taken at the start: exact for
    one request at a time, shared by all that run at once."""

    def __init__(self, device: torch.device):
        self.device = device
        self._base = 0

    def __enter__(self) -> CudaAllocatorStatistics:
        torch.cuda.synchronize(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def live_bytes(self) -> int:
        return torch.cuda.memory_allocated(self.device) - self._base

    @property
    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) - self._base

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


# What each measurement counts with, given the device.
COUNTERS = {
    "allocation window": AllocationWindow,
    "cuda allocator statistics": CudaAllocatorStatistics,
    "dispatch tracker": lambda device: CpuAllocationTracker(),
}


def counter(device: torch.device):
    """The counter `measurement(device)` names, not yet opened."""
    return COUNTERS[measurement(device)](device)


class MemoryProbe:
    """Live and peak bytes of one measured window, with per-phase peaks.

    Use as a context manager around the inference. `live_bytes()` is what the window holds
    now; `begin_phase(name)` starts a phase whose peak lands in `phase_peaks[name]`.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.phase_peaks: dict[str, int] = {}
        self.phase_starts: dict[str, int] = {}
        self.peak_bytes = 0
        self._phase: str | None = None
        self._counter = None

    def __enter__(self) -> MemoryProbe:
        self._counter = counter(self.device)
        self._counter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._close_phase()
        self._counter.__exit__(*exc)
        self.peak_bytes = max(self.peak_bytes, self._counter.peak_bytes)

    def live_bytes(self) -> int:
        return self._counter.live_bytes if self._counter else 0

    def begin_phase(self, name: str) -> None:
        """Closes the running phase and starts `name`; its peak goes to `phase_peaks`."""
        self._close_phase()
        self._phase = name
        self.phase_starts[name] = self.live_bytes()
        self._counter.reset_peak()

    def _close_phase(self) -> None:
        if self._phase is None:
            return
        peak = self._counter.peak_bytes
        self.phase_peaks[self._phase] = peak
        self.peak_bytes = max(self.peak_bytes, peak)
        self._phase = None


class NullProbe:
    """Stands in for `MemoryProbe` when nothing is measured."""

    peak_bytes = 0

    def live_bytes(self) -> int:
        return 0

    def begin_phase(self, name: str) -> None:
        pass


@contextmanager
def measure(device: torch.device | str = "cpu") -> Iterator[MemoryProbe]:
    """`with measure(device) as probe: ...`, then `probe.peak_bytes`."""
    with MemoryProbe(device) as probe:
        yield probe
