"""The GPU host's NVML sampler (harness.compute.nvml), on a stand-in for pynvml: utilization and the
SM clock averaged over its polls, and a driver that will not give the clock costs only the clock."""
from __future__ import annotations

import sys
import time
import types

import pytest


@pytest.fixture
def fake_nvml(monkeypatch):
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i, NVML_CLOCK_SM=1, NVMLError=RuntimeError,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40),
        nvmlDeviceGetClockInfo=lambda h, kind: 1980)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def sample(seconds=0.05):
    from harness.compute.nvml import NvmlSampler
    s = NvmlSampler(interval_s=0.002)
    s.start()
    time.sleep(seconds)
    return s.stop()


def test_sampler_averages_utilization_and_the_sm_clock(fake_nvml):
    util, n, clock = sample()
    assert n >= 3 and util == 40 and clock == 1980


def test_a_clock_the_driver_withholds_leaves_utilization(fake_nvml):
    def refuse(handle, kind):
        raise fake_nvml.NVMLError("not supported")
    fake_nvml.nvmlDeviceGetClockInfo = refuse
    util, n, clock = sample()
    assert n >= 3 and util == 40 and clock is None
