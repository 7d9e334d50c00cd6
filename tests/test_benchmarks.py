"""The GPU check runs (on the tiny test models, on the CPU) and prints its one JSON line."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_runs_on_tiny_models_on_the_cpu():
    command = [
        sys.executable, str(BENCHMARKS / "gpu_check.py"), "--shapes", "tiny", "--device", "cpu",
        "--images", "8", "--batch-size", "4",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for precision in ("fp32", "bf16"):
        numbers = result[precision]
        assert numbers["peak_gpu_gb"] is None  # no GPU here
        for key in ("behavior_epoch_s_cached", "behavior_epoch_s_uncached", "meg_stage1_epoch_s"):
            assert numbers[key] > 0, key
        assert numbers["embed_images_per_s"] > 0
