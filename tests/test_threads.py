"""Host threads for the model (harness.compute.threads): 1 on CUDA, the default on a CPU device,
and the engine applies the spec's count in the process that runs the model."""
import subprocess
import sys

import pytest
import torch

from harness.compute import threads
from harness.errors import UsageError
from harness.testbed.launcher import REPO


def test_default_is_one_thread_on_cuda_and_torchs_own_on_cpu():
    assert threads.resolved(None, "cuda") == 1
    assert threads.resolved(None, "cuda:1") == 1
    assert threads.resolved(None, "cpu") == torch.get_num_threads()
    assert threads.resolved(3, "cuda") == 3


def test_zero_threads_is_a_usage_error():
    with pytest.raises(UsageError, match="threads 0 must be >= 1"):
        threads.resolved(0, "cpu")


def test_an_engine_gives_its_process_the_specs_threads():
    """In a fresh process (the count is process-wide): the engine that runs the model sets it."""
    code = ("import torch; from harness.compute.models import ModelSpec, build_model; "
            "from harness.compute.engine import Engine, EngineSpec; "
            "e = Engine(build_model(ModelSpec('tiny', 'fp32'), 'cpu'), EngineSpec('eager', threads=1)); "
            "print(e.threads, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"], out.stdout
