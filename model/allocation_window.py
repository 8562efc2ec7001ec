"""Peak memory of one thread's work, told by torch's own allocators.

torch's CPU allocator and CUDA caching allocator report each allocation and free to a hook
that is thread-local and follows the work into torch's intra-op threads (the profiler's
memory view uses it). `allocation_window.cpp` installs a counter there; this module builds
it once per torch version with the system's C++ compiler (about a second; the C++ ABI is
torch's own, so it is never shipped prebuilt) and binds it with ctypes. Counting costs a few
C++ instructions per allocation instead of a Python call per op, and it sees every byte the
allocator hands out, the buffers inside ops (a convolution's column buffer) included.

Where no compiler is found, `library()` returns None and says why in `unavailable_reason()`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
DEVICE_TYPES = {"cpu": 0, "cuda": 1}  # c10::DeviceType


def cache_dir() -> Path:
    """Where built libraries live: $QGN_NATIVE_CACHE, else the user's cache directory."""
    if configured := os.environ.get("QGN_NATIVE_CACHE"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qgn-serve"


def library_path() -> Path:
    """One library per source text, torch build and C++ ABI: any change builds a new one."""
    torch_dir = Path(torch.__file__).parent
    key = hashlib.sha256(
        SOURCE.read_bytes()
        + f"{torch.__version__}|{torch_dir}|{torch._C._GLIBCXX_USE_CXX11_ABI}".encode()
    ).hexdigest()[:16]
    return cache_dir() / f"allocation_window-{key}.so"


def build(target: Path) -> None:
    """Compiles the window into `target` (atomically: concurrent builders never see half a
    file); raises RuntimeError with the compiler's message when it cannot."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    torch_dir = Path(torch.__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    command = [
        compiler, "-O2", "-std=c++17", "-shared", "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{torch_dir / 'include'}", str(SOURCE), "-o", partial,
        f"-L{torch_dir / 'lib'}", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        # mkstemp made the file 0600 and the linker added execute bits: a library built by
        # one user (root, in an image) is loaded by another (the server's), so it is 0755.
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


_unavailable: list[str] = []


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded window library, built on first use; None where it cannot be had."""
    path = library_path()
    try:
        if not path.exists():
            build(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _unavailable.append(str(error))
        log.warning("allocation windows unavailable, memory measured per op instead: %s", error)
        return None
    lib.qgn_window_open.restype = ctypes.c_void_p
    lib.qgn_window_open.argtypes = [ctypes.c_int]
    lib.qgn_window_close.restype = ctypes.c_int
    for name in ("close", "free", "reset_peak", "live", "peak"):
        getattr(lib, f"qgn_window_{name}").argtypes = [ctypes.c_void_p]
    for name in ("live", "peak"):
        getattr(lib, f"qgn_window_{name}").restype = ctypes.c_int64
    lib.qgn_window_reset_peak.restype = None
    lib.qgn_windows_alive.argtypes = []
    lib.qgn_windows_alive.restype = ctypes.c_int64
    lib.qgn_window_free.restype = None
    return lib


def windows_alive() -> int:
    """Windows not yet destroyed in this process (0 where the library is unavailable)."""
    lib = library()
    return lib.qgn_windows_alive() if lib is not None else 0


def unavailable_reason() -> str | None:
    """Why `library()` returned None (None when it did not)."""
    return _unavailable[0] if library() is None else None


class AllocationWindow:
    """Counts the bytes allocated on `device` by this thread's work while it is open.

    `live_bytes` is what was allocated in the window and not freed yet, `peak_bytes` its
    highest value; frees of blocks from before the window do not count. Open and close it on
    one thread (windows nest, innermost closed first).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        lib = library()
        if lib is None:
            raise RuntimeError(f"allocation windows unavailable: {unavailable_reason()}")
        self._lib = lib
        self._device_type = DEVICE_TYPES[torch.device(device).type]
        self._handle: int | None = None
        self._live = self._peak = 0  # what it read when it closed

    def __enter__(self) -> AllocationWindow:
        self._handle = self._lib.qgn_window_open(self._device_type)
        return self

    def __exit__(self, *exc) -> None:
        if self._lib.qgn_window_close(self._handle) != 0:
            raise RuntimeError("allocation windows must be closed innermost first, on their thread")
        self._live, self._peak = self.live_bytes, self.peak_bytes
        self._lib.qgn_window_free(self._handle)
        self._handle = None

    @property
    def live_bytes(self) -> int:
        if self._handle is None:
            return self._live
        return self._lib.qgn_window_live(self._handle)

    @property
    def peak_bytes(self) -> int:
        if self._handle is None:
            return self._peak
        return self._lib.qgn_window_peak(self._handle)

    def reset_peak(self) -> None:
        """Starts a new peak from what is live now."""
        if self._handle is not None:
            self._lib.qgn_window_reset_peak(self._handle)


if __name__ == "__main__":
    # `python -m model.allocation_window`: build now (the Docker image does, at build time).
    if library() is None:
        raise SystemExit(f"cannot build the allocation window: {unavailable_reason()}")
    print(library_path())
