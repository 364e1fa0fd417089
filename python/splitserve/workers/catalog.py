"""The SageMaker hosting instance types this gateway emulates, and the CPU sets instances get.

An instance of type `ml.m5.xlarge` asks for 4 vCPUs; on this host it gets 4 CPUs from the pool
(`WorkerSettings.host_cpus()`), or every CPU of the pool when the pool is smaller. `CpuAllocator`
spreads instances over the least-used CPUs, so two 2-vCPU instances on a 4-CPU host do not share
a CPU, and a third one overlaps with the first.

The figures are those of the EC2 instance each type runs on (see
docs/sagemaker-api.md, section 2). `ml.t3.*` is not a hosting type (it exists only
for notebooks), and the hosting enum has no `ml.m5.8xlarge`/`ml.m5.16xlarge`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GIB = 1024**3


class UnknownInstanceType(ValueError):
    """An instance type that is not a SageMaker hosting type this gateway knows."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown instance type {name!r}: not a SageMaker hosting instance type this gateway"
            " supports (for example ml.m5.large, ml.c5.xlarge, ml.t2.medium)"
        )
        self.name = name


@dataclass(frozen=True)
class InstanceType:
    """One hosting instance type.

    Attributes:
        name: the SageMaker name, e.g. `ml.m5.xlarge`.
        vcpus: how many vCPUs the EC2 instance has.
        memory_gib: its memory in GiB (c4 sizes are fractional).
    """

    name: str
    vcpus: int
    memory_gib: float

    @property
    def memory_bytes(self) -> int:
        """The memory in bytes (what `RLIMIT_AS` is set to when memory caps are on)."""
        return int(self.memory_gib * GIB)


def _family(family: str, sizes: Iterable[tuple[str, int, float]]) -> list[InstanceType]:
    return [InstanceType(f"ml.{family}.{size}", vcpus, gib) for size, vcpus, gib in sizes]


_M5_SIZES = (
    ("large", 2, 8.0),
    ("xlarge", 4, 16.0),
    ("2xlarge", 8, 32.0),
    ("4xlarge", 16, 64.0),
    ("12xlarge", 48, 192.0),
    ("24xlarge", 96, 384.0),
)
_C5_SIZES = (
    ("large", 2, 4.0),
    ("xlarge", 4, 8.0),
    ("2xlarge", 8, 16.0),
    ("4xlarge", 16, 32.0),
    ("9xlarge", 36, 72.0),
    ("18xlarge", 72, 144.0),
)

#: The one table of instance types: name, vCPUs and memory of the EC2 instance behind each.
INSTANCE_TYPES: tuple[InstanceType, ...] = (
    *_family(
        "t2",
        (("medium", 2, 4.0), ("large", 2, 8.0), ("xlarge", 4, 16.0), ("2xlarge", 8, 32.0)),
    ),
    *_family("m5", _M5_SIZES),
    *_family("m5d", _M5_SIZES),
    *_family("c5", _C5_SIZES),
    *_family("c5d", _C5_SIZES),
    *_family(
        "m4",
        (
            ("xlarge", 4, 16.0),
            ("2xlarge", 8, 32.0),
            ("4xlarge", 16, 64.0),
            ("10xlarge", 40, 160.0),
            ("16xlarge", 64, 256.0),
        ),
    ),
    *_family(
        "c4",
        (
            ("large", 2, 3.75),
            ("xlarge", 4, 7.5),
            ("2xlarge", 8, 15.0),
            ("4xlarge", 16, 30.0),
            ("8xlarge", 36, 60.0),
        ),
    ),
    *_family(
        "r5",
        (
            ("large", 2, 16.0),
            ("xlarge", 4, 32.0),
            ("2xlarge", 8, 64.0),
            ("4xlarge", 16, 128.0),
            ("12xlarge", 48, 384.0),
            ("24xlarge", 96, 768.0),
        ),
    ),
)


class InstanceCatalog:
    """Looks instance types up by name.

    Args:
        types: the table to serve; the built-in `INSTANCE_TYPES` unless a test passes its own.
    """

    def __init__(self, types: Iterable[InstanceType] = INSTANCE_TYPES) -> None:
        self._types = {instance_type.name: instance_type for instance_type in types}

    def get(self, name: str) -> InstanceType:
        """The instance type called `name`.

        Raises:
            UnknownInstanceType: `name` is not in the table.
        """
        try:
            return self._types[name]
        except KeyError:
            raise UnknownInstanceType(name) from None

    def __contains__(self, name: object) -> bool:
        """Whether `name` is a known instance type."""
        return name in self._types

    def names(self) -> list[str]:
        """Every known instance type name, sorted."""
        return sorted(self._types)


class CpuAllocator:
    """Hands out CPU sets from a fixed pool, spreading instances over the least-used CPUs.

    Each allocation takes `min(count, len(pool))` CPUs: the least-used ones, ties going to the
    lowest CPU id. When the host has fewer CPUs than the instances ask for, sets overlap.

    Args:
        pool: the host CPUs instances may use (`WorkerSettings.host_cpus()`).

    Raises:
        ValueError: the pool is empty or holds a CPU twice.
    """

    def __init__(self, pool: Sequence[int]) -> None:
        if not pool:
            raise ValueError("the CPU pool is empty")
        if len(set(pool)) != len(pool):
            raise ValueError(f"the CPU pool lists a CPU twice: {tuple(pool)}")
        self._use_count = dict.fromkeys(sorted(pool), 0)
        self._allocations: dict[str, tuple[int, ...]] = {}

    @property
    def pool(self) -> tuple[int, ...]:
        """The CPUs this allocator hands out, sorted."""
        return tuple(self._use_count)

    def allocate(self, owner: str, count: int) -> tuple[int, ...]:
        """Give `owner` (an instance name) a set of `min(count, len(pool))` CPUs.

        Returns:
            the CPU ids, sorted.

        Raises:
            ValueError: `count` is below 1, or `owner` already holds a set.
        """
        if count < 1:
            raise ValueError(f"an instance needs at least one CPU, not {count}")
        if owner in self._allocations:
            raise ValueError(f"{owner} already holds CPUs {self._allocations[owner]}")
        by_use = sorted(self._use_count, key=lambda cpu: (self._use_count[cpu], cpu))
        chosen = tuple(sorted(by_use[: min(count, len(by_use))]))
        for cpu in chosen:
            self._use_count[cpu] += 1
        self._allocations[owner] = chosen
        return chosen

    def release(self, owner: str) -> None:
        """Return `owner`'s CPUs to the pool; releasing twice (or never allocated) is a no-op."""
        for cpu in self._allocations.pop(owner, ()):
            self._use_count[cpu] -= 1

    def allocations(self) -> dict[str, tuple[int, ...]]:
        """The CPU set of every instance that holds one, by instance name."""
        return dict(self._allocations)

    def usage(self) -> dict[int, int]:
        """How many instances each CPU of the pool is given to."""
        return dict(self._use_count)
