"""/proc sampling for the instance metrics: what is read agrees with psutil, and the CPU share is
the delta between scrapes."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from splitserve.metrics.procstat import CpuSampler, ProcessTimes, ProcessUsage, read_process


def test_read_process_agrees_with_psutil() -> None:
    sum(range(2_000_000))  # use some CPU first
    times = read_process(os.getpid())
    process = psutil.Process()
    cpu = process.cpu_times()
    assert times.cpu_seconds == pytest.approx(cpu.user + cpu.system, abs=0.05)
    assert times.memory_bytes == pytest.approx(process.memory_info().rss, rel=0.05)
    assert times.age_seconds == pytest.approx(time.time() - process.create_time(), abs=1.0)
    with pytest.raises(FileNotFoundError):
        read_process(2**22 + 1)  # above pid_max's default ceiling: never a process


class FakeProcesses:
    """A clock and a /proc reader under the test's control."""

    def __init__(self) -> None:
        self.now = 100.0
        self.readings: dict[int, ProcessTimes] = {}

    def clock(self) -> float:
        return self.now

    def read(self, pid: int) -> ProcessTimes:
        if pid not in self.readings:
            raise FileNotFoundError(pid)
        return self.readings[pid]


def test_cpu_sampler_reports_the_delta_between_scrapes() -> None:
    fake = FakeProcesses()
    sampler = CpuSampler(1.0, cpus=4, clock=fake.clock, reader=fake.read)
    fake.readings[7] = ProcessTimes(cpu_seconds=5.0, age_seconds=20.0, memory_bytes=1000)
    # The first sample is the average over the process's life.
    assert sampler.sample("i", 7) == ProcessUsage(25.0, 1000)
    fake.now += 2.0
    fake.readings[7] = ProcessTimes(cpu_seconds=8.0, age_seconds=22.0, memory_bytes=2000)
    usage = sampler.sample("i", 7)
    assert usage is not None
    assert usage.cpu_percent == pytest.approx(150.0)  # 3 CPU-seconds in 2 s: summed over cores
    assert usage.memory_bytes == 2000
    # A scrape sooner than the minimum interval repeats the value rather than measure ticks.
    fake.now += 0.1
    fake.readings[7] = ProcessTimes(cpu_seconds=8.1, age_seconds=22.1, memory_bytes=2000)
    again = sampler.sample("i", 7)
    assert again is not None
    assert again.cpu_percent == pytest.approx(150.0)
    # Never above 100 x CPUs, never below 0.
    fake.now += 1.0
    fake.readings[7] = ProcessTimes(cpu_seconds=100.0, age_seconds=23.0, memory_bytes=2000)
    capped = sampler.sample("i", 7)
    assert capped is not None
    assert capped.cpu_percent == 400.0
    # A restart (new pid under the same instance) starts again from the process's life.
    fake.readings[8] = ProcessTimes(cpu_seconds=1.0, age_seconds=10.0, memory_bytes=5)
    assert sampler.sample("i", 8) == ProcessUsage(10.0, 5)
    assert sampler.sample("gone", 9) is None
    sampler.keep([])  # forgets "i": its next sample is a first one again
    fake.now += 5.0
    assert sampler.sample("i", 8) == ProcessUsage(10.0, 5)
