"""The instance-type table and CPU sets."""

from __future__ import annotations

import pytest

from splitserve.workers.catalog import (
    INSTANCE_TYPES,
    CpuAllocator,
    InstanceCatalog,
    UnknownInstanceType,
)


@pytest.mark.parametrize(
    ("family", "sizes"),
    [
        ("t2", ["medium", "large", "xlarge", "2xlarge"]),
        ("m5", ["large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge"]),
        ("m5d", ["large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge"]),
        ("c5", ["large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge"]),
        ("c5d", ["large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge"]),
        ("m4", ["xlarge", "2xlarge", "4xlarge", "10xlarge", "16xlarge"]),
        ("c4", ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge"]),
        ("r5", ["large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge"]),
    ],
)
def test_every_family_and_size_is_present(family: str, sizes: list[str]) -> None:
    catalog = InstanceCatalog()
    for size in sizes:
        assert f"ml.{family}.{size}" in catalog
    listed = sorted(name for name in catalog.names() if name.startswith(f"ml.{family}."))
    assert listed == sorted(f"ml.{family}.{size}" for size in sizes)


@pytest.mark.parametrize(
    ("name", "vcpus", "memory_gib"),
    [
        ("ml.t2.medium", 2, 4.0),
        ("ml.m5.large", 2, 8.0),
        ("ml.m5.24xlarge", 96, 384.0),
        ("ml.m5d.xlarge", 4, 16.0),
        ("ml.c5.9xlarge", 36, 72.0),
        ("ml.c5d.18xlarge", 72, 144.0),
        ("ml.m4.10xlarge", 40, 160.0),
        ("ml.c4.large", 2, 3.75),
        ("ml.c4.8xlarge", 36, 60.0),
        ("ml.r5.large", 2, 16.0),
        ("ml.r5.24xlarge", 96, 768.0),
    ],
)
def test_figures_are_the_ec2_ones(name: str, vcpus: int, memory_gib: float) -> None:
    instance_type = InstanceCatalog().get(name)
    assert (instance_type.vcpus, instance_type.memory_gib) == (vcpus, memory_gib)
    assert instance_type.memory_bytes == int(memory_gib * 1024**3)


@pytest.mark.parametrize(
    "name", ["ml.t3.medium", "ml.m5.8xlarge", "ml.m5.16xlarge", "ml.c5.12xlarge", "m5.large", ""]
)
def test_unknown_types_are_refused_with_a_typed_error(name: str) -> None:
    with pytest.raises(UnknownInstanceType, match="unknown instance type") as raised:
        InstanceCatalog().get(name)
    assert isinstance(raised.value, ValueError)
    assert raised.value.name == name
    assert name not in InstanceCatalog()


def test_the_table_has_no_duplicates() -> None:
    names = [instance_type.name for instance_type in INSTANCE_TYPES]
    assert len(names) == len(set(names))


def test_allocations_overlap_when_the_pool_is_smaller_than_asked() -> None:
    allocator = CpuAllocator((0, 1))
    sets = [allocator.allocate(f"i{index}", 2) for index in range(3)]
    assert sets == [(0, 1), (0, 1), (0, 1)]
    assert allocator.usage() == {0: 3, 1: 3}
    assert allocator.allocations() == {"i0": (0, 1), "i1": (0, 1), "i2": (0, 1)}


def test_instances_spread_over_the_least_used_cpus() -> None:
    allocator = CpuAllocator((3, 0, 1, 2))
    assert allocator.pool == (0, 1, 2, 3)
    assert allocator.allocate("a", 2) == (0, 1)
    assert allocator.allocate("b", 2) == (2, 3)
    # Every CPU is used once: ties go to the lowest ids.
    assert allocator.allocate("c", 1) == (0,)
    assert allocator.allocate("d", 2) == (1, 2)
    assert allocator.usage() == {0: 2, 1: 2, 2: 2, 3: 1}


def test_release_returns_the_cpus() -> None:
    allocator = CpuAllocator((0, 1, 2, 3))
    allocator.allocate("a", 2)
    allocator.allocate("b", 2)
    allocator.release("a")
    allocator.release("a")  # a second release is a no-op
    assert allocator.allocate("c", 2) == (0, 1)
    assert allocator.allocations() == {"b": (2, 3), "c": (0, 1)}


def test_allocator_refuses_bad_requests() -> None:
    with pytest.raises(ValueError, match="empty"):
        CpuAllocator(())
    with pytest.raises(ValueError, match="twice"):
        CpuAllocator((0, 0))
    allocator = CpuAllocator((0,))
    with pytest.raises(ValueError, match="at least one CPU"):
        allocator.allocate("a", 0)
    allocator.allocate("a", 1)
    with pytest.raises(ValueError, match="already holds"):
        allocator.allocate("a", 1)
