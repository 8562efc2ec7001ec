"""The default device budget reads the cgroup's memory limit: v1 and v2, nested limits, the
"no limit" spellings, and the arithmetic of what is left for requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.scheme_request import MIB
from server.memory_limit import (
    RESERVE_BYTES,
    CgroupLimit,
    cgroup_memory_limit,
    device_memory,
    host_memory_bytes,
)

CPU = torch.device("cpu")
CONTAINER = "/docker/0123abcd"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v1_root(tmp_path: Path, limits: dict[str, str], mount_root: str = CONTAINER) -> Path:
    """A cgroup v1 machine as Docker shows it: the memory hierarchy's `mount_root` mounted at
    /sys/fs/cgroup/memory; `limits` maps directories under the mount to their limit."""
    write(
        tmp_path,
        "proc/self/cgroup",
        f"9:name=systemd:{CONTAINER}\n5:cpuacct,cpu:{CONTAINER}\n4:memory:{CONTAINER}\n",
    )
    write(
        tmp_path,
        "proc/self/mountinfo",
        "85 84 0:47 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n"
        f"86 85 0:29 {CONTAINER} /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu\n"
        f"89 85 0:32 {mount_root} /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
    )
    for directory, value in limits.items():
        write(tmp_path, f"sys/fs/cgroup/memory/{directory}/memory.limit_in_bytes", value + "\n")
    return tmp_path


def v2_root(tmp_path: Path, path: str, limits: dict[str, str]) -> Path:
    """A cgroup v2 machine: the unified hierarchy at /sys/fs/cgroup, the process in `path`."""
    write(tmp_path, "proc/self/cgroup", f"0::{path}\n")
    write(
        tmp_path,
        "proc/self/mountinfo",
        "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    for directory, value in limits.items():
        write(tmp_path, f"sys/fs/cgroup/{directory}/memory.max", value + "\n")
    return tmp_path


def test_v1_in_a_container_reads_its_limit(tmp_path):
    root = v1_root(tmp_path, {".": str(3 << 30)})
    limit = cgroup_memory_limit(root)
    assert limit.bytes == 3 << 30
    assert limit.file == root / "sys/fs/cgroup/memory/memory.limit_in_bytes"


def test_v1_unlimited_is_no_limit(tmp_path):
    assert cgroup_memory_limit(v1_root(tmp_path, {".": "9223372036854771712"})) is None


def test_v1_takes_the_smallest_limit_up_to_the_mount(tmp_path):
    """With the host's cgroup namespace the whole hierarchy is mounted: the process's group
    and every parent up to the mount count, the smallest wins."""
    limits = {"docker/0123abcd": str(8 << 30), "docker": str(2 << 30), ".": "9223372036854771712"}
    limit = cgroup_memory_limit(v1_root(tmp_path, limits, mount_root="/"))
    assert limit.bytes == 2 << 30 and limit.file.parent.name == "docker"


def test_v2_max_is_no_limit_and_a_parent_limit_counts(tmp_path):
    root = v2_root(tmp_path, "/kubepods/pod1/c1", {"kubepods/pod1/c1": "max"})
    assert cgroup_memory_limit(root) is None
    write(root, "sys/fs/cgroup/kubepods/pod1/memory.max", f"{1536 * MIB}\n")
    assert cgroup_memory_limit(root).bytes == 1536 * MIB


def test_v2_private_namespace_reads_the_mount_itself(tmp_path):
    assert cgroup_memory_limit(v2_root(tmp_path, "/", {".": str(3 << 30)})).bytes == 3 << 30


def test_no_cgroup_files_is_no_limit(tmp_path):
    assert cgroup_memory_limit(tmp_path) is None


def test_the_default_under_a_limit_leaves_the_held_the_queue_and_the_reserve(tmp_path):
    limit = CgroupLimit(3 << 30, tmp_path / "memory.max")
    found = device_memory(CPU, None, 200 * MIB, limit, held_bytes=400 * MIB)
    assert found.bytes == (3 << 30) - 400 * MIB - 200 * MIB - RESERVE_BYTES
    assert "cgroup limit 3072 MiB" in found.source and "400 MiB held" in found.source


def test_without_a_limit_or_above_the_host_the_default_is_half_the_host(tmp_path):
    half = host_memory_bytes() // 2
    above = CgroupLimit(host_memory_bytes() * 2, tmp_path / "memory.max")
    assert device_memory(CPU, None, limit=above).bytes == half
    assert "half the host" in device_memory(CPU, None, limit=above).source


def test_the_setting_wins(tmp_path):
    limit = CgroupLimit(1 << 30, tmp_path / "memory.max")
    found = device_memory(CPU, 2500.0, limit=limit)
    assert found.bytes == 2500 * MIB and found.source == "QGN_DEVICE_MEMORY_MB"


@pytest.mark.skipif(not Path("/proc/self/cgroup").is_file(), reason="no /proc/self/cgroup")
def test_this_machine_reads_without_error():
    limit = cgroup_memory_limit()
    assert limit is None or limit.bytes > 0
