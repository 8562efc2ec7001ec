"""How much memory the requests running together may hold: `QGN_DEVICE_MEMORY_MB`, or a
default that respects the machine the server really has.

In a container the machine's memory is not the server's: `docker run -m 3g` or a Kubernetes
limit sets a cgroup limit, and past it the kernel kills the whole process. So on the CPU the
default is the cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, the smallest
along the cgroup's path up to its mount) less what the process holds at start and a stated
reserve; without a limit, half the host's memory. On CUDA it is the device's free memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from model.scheme_request import MIB, mib_to_bytes

# Kept out of the device budget on the CPU: what a process holds that no request's budget
# counts (allocator slack after large requests, the interpreter's own growth), and the
# response of the largest request while it is written.
RESERVE_BYTES = 256 * MIB
# cgroup v1 says "no limit" with a huge page-rounded number (PAGE_COUNTER_MAX pages).
UNLIMITED_V1_BYTES = 1 << 60


@dataclass(frozen=True)
class DeviceMemory:
    """The device budget in bytes, and where the figure came from (shown in /v1/model)."""

    bytes: int
    source: str


@dataclass(frozen=True)
class CgroupLimit:
    bytes: int
    file: Path


def _cgroup_dirs(root: Path) -> list[tuple[Path, Path, str]]:
    """(the cgroup's own directory, its controller's mount point, "v1" or "v2") for the
    memory controller, read from /proc/self/cgroup and /proc/self/mountinfo."""
    memberships = {}  # "memory" (v1) or "" (v2) -> the cgroup path
    for line in (root / "proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            memberships[""] = path
        elif "memory" in controllers.split(","):
            memberships["memory"] = path
    found = []
    for line in (root / "proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup" and "memory" in options.split(",") and "memory" in memberships:
            version, path = "v1", memberships["memory"]
        elif fstype == "cgroup2" and "" in memberships:
            version, path = "v2", memberships[""]
        else:
            continue
        relative = os.path.relpath(path, mount_root)
        if relative.startswith(".."):  # this mount does not show our cgroup
            continue
        mount = root / mount_point.lstrip("/")
        found.append((Path(os.path.normpath(mount / relative)), mount, version))
    return found


def cgroup_memory_limit(root: Path = Path("/")) -> CgroupLimit | None:
    """The smallest memory limit on the way from this process's cgroup up to the mount of
    its controller; None where there is none (or no cgroup can be read)."""
    try:
        places = _cgroup_dirs(root)
    except OSError:
        return None
    limits = []
    for directory, mount, version in places:
        name = "memory.max" if version == "v2" else "memory.limit_in_bytes"
        current = directory
        while True:
            file = current / name
            try:
                raw = file.read_text().strip()
            except OSError:
                raw = ""
            if raw.isdigit() and int(raw) < UNLIMITED_V1_BYTES:  # v2 says "max" for none
                limits.append(CgroupLimit(int(raw), file))
            if current == mount or mount not in current.parents:
                break
            current = current.parent
    return min(limits, key=lambda limit: limit.bytes, default=None)


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident set now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def device_memory(
    device: torch.device,
    configured_mb: float | None,
    queued_bytes: int = 0,
    limit: CgroupLimit | None = None,
    held_bytes: int | None = None,
) -> DeviceMemory:
    """The device budget: `QGN_DEVICE_MEMORY_MB` when set; on CUDA the device's free memory
    now (the weights are loaded) less 10 % of its total; on the CPU the cgroup limit (when
    below the host's memory) less what the process holds now, what a full queue's uploads
    hold (`queued_bytes`: a queued request keeps its compressed image) and `RESERVE_BYTES`,
    else half the host's memory."""
    if configured_mb is not None:
        return DeviceMemory(mib_to_bytes(configured_mb), "QGN_DEVICE_MEMORY_MB")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(max(MIB, free - total // 10), "CUDA free memory less 10 % of total")
    host = host_memory_bytes()
    limit = limit if limit is not None else cgroup_memory_limit()
    if limit is None or limit.bytes >= host:
        return DeviceMemory(host // 2, "half the host's memory (no cgroup memory limit)")
    held = resident_bytes() if held_bytes is None else held_bytes
    available = max(MIB, limit.bytes - held - queued_bytes - RESERVE_BYTES)
    return DeviceMemory(
        available,
        f"cgroup limit {limit.bytes / MIB:.0f} MiB ({limit.file}) less {held / MIB:.0f} MiB "
        f"held at start, {queued_bytes / MIB:.0f} MiB for a full queue's uploads and a "
        f"{RESERVE_BYTES / MIB:.0f} MiB reserve",
    )
