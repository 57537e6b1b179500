"""A training step configured for GPUs that sees none stops with an error (it must not fall back
to gloo on the CPU); on a machine without GPUs, device auto and cpu train on the CPU."""
from __future__ import annotations

import pytest
import torch

from reclaif.config import TrainConfig
from reclaif.errors import ConfigError
from reclaif.train.strategy import Strategy

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")


def test_device_cuda_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    with pytest.raises(ConfigError, match="device: cuda is configured but torch sees no GPU"):
        Strategy(TrainConfig(device="cuda"))


def test_a_slurm_job_given_gpus_that_torch_cannot_see_is_an_error(monkeypatch):
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    with pytest.raises(ConfigError, match="Slurm gave this job GPUs"):
        Strategy(TrainConfig())
    assert Strategy(TrainConfig(device="cpu")).device == torch.device("cpu")  # asked for


def test_auto_without_gpus_trains_on_the_cpu(monkeypatch):
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    assert Strategy(TrainConfig()).device == torch.device("cpu")
