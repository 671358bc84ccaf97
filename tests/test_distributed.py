"""Data-parallel training across two ranks that `mlx.launch` starts on 127.0.0.1 (ring backend,
CPU): the adapter equals the single-process adapter, a run stopped under two ranks resumes in
one, only rank 0 writes, and a failing rank stops the other instead of leaving it waiting."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from test_train import adapter_arrays, config, write_dataset

from train.checkpoints import list_checkpoints
from train.trainer import train

LAUNCH = Path(sys.executable).with_name("mlx.launch")
# Two ranks sum two partial gradients where one process sums them all at once: float32
# rounding differs in the last bits, and Adam's normalisation carries it into the update.
TOLERANCE = 1e-5

SCRIPT = """
import json, sys
from train.config import TrainConfig
from train.trainer import train

settings = json.loads(sys.argv[1])
stop = int(sys.argv[2])
fail_rank = int(sys.argv[3])

class Stop(Exception):
    pass

def on_step(stats):
    import mlx.core as mx
    if stats.step == 3 and mx.distributed.init().rank() == fail_rank:
        raise SystemExit("rank %d fails on purpose" % fail_rank)
    if stats.step == stop:
        raise Stop

try:
    result = train(TrainConfig(**settings), on_step=on_step, log=lambda _: None)
except Stop:
    pass
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "toy", n_train=16)


def launch(tmp_path: Path, settings, ranks: int, stop: int = 0, fail_rank: int = -1):
    script = tmp_path / "train_ranks.py"
    script.write_text(SCRIPT)
    command = [str(LAUNCH), "--backend", "ring", "-n", str(ranks), sys.executable, str(script)]
    arguments = [json.dumps(asdict(settings)), str(stop), str(fail_rank)]
    return subprocess.run(
        [*command, *arguments],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < TOLERANCE, f"largest difference {worst}"


pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed")


def test_two_ranks_train_the_single_process_adapter_and_resume_in_one(
    tiny_mlx_dir, dataset, tmp_path
):
    single = config(tiny_mlx_dir, dataset, tmp_path / "single", lora_dropout=0.0)
    train(single, log=lambda _: None)  # 16 examples x 2 epochs / 4 = 8 steps

    both = config(tiny_mlx_dir, dataset, tmp_path / "both", lora_dropout=0.0)
    done = launch(tmp_path, both, ranks=2)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert_close(adapter_arrays(tmp_path / "single"), adapter_arrays(tmp_path / "both"))
    metadata = json.loads((tmp_path / "both" / "adapter_config.json").read_text())
    assert metadata["world_size"] == 2 and metadata["steps"] == 8

    # Stopped after step 4 under two ranks (checkpoint at 4), finished in one process.
    half = config(tiny_mlx_dir, dataset, tmp_path / "half", lora_dropout=0.0)
    stopped = launch(tmp_path, half, ranks=2, stop=4)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert not (tmp_path / "half" / "adapters.safetensors").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "half")] == [2, 4]
    resumed = config(tiny_mlx_dir, dataset, tmp_path / "half", lora_dropout=0.0, resume=True)
    train(resumed, log=lambda _: None)
    assert_close(adapter_arrays(tmp_path / "single"), adapter_arrays(tmp_path / "half"))


def test_a_failing_rank_stops_the_run_and_keeps_the_last_checkpoint(
    tiny_mlx_dir, dataset, tmp_path
):
    # Rank 1 fails after step 3; rank 0 saved a checkpoint at step 2.
    adapter = tmp_path / "adapter"
    settings = config(tiny_mlx_dir, dataset, adapter, lora_dropout=0.0)
    done = launch(tmp_path, settings, ranks=2, fail_rank=1)
    output = done.stdout + done.stderr
    assert "rank 1 fails on purpose" in output
    # The other rank stops too: mlx.launch ends it, or its next all-reduce fails, clearly.
    assert "rank 0 exited" in output or "another rank stopped" in output
    assert not (adapter / "adapters.safetensors").exists()
    assert [step for step, _ in list_checkpoints(adapter)] == [2]
    resumed = config(tiny_mlx_dir, dataset, adapter, lora_dropout=0.0, resume=True)
    assert train(resumed, log=lambda _: None).steps == 8
