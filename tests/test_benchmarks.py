"""Every benchmark script runs end to end at its smallest setting and prints its targets with
ok/miss (the figures themselves are measured by hand, never in timed tests). The scripts take
``--device cuda``; here the same code runs on the CPU."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

#: script -> its smallest run (2 threads: the suite's setting, which the scripts set globally)
SMOKE = {
    "paper_protocol": ["--models", "mnist,resnet", "--methods", "gradient", "--steps", "2", "--manipex-steps", "2",
                       "--images", "2", "--ref-images", "1", "--threads", "2"],
    "scaling": ["--sizes", "28", "--batches", "1,2", "--methods", "gradient,lrp", "--repeats", "1", "--steps", "2,4",
                "--attack-batch", "2", "--threads", "2"],
    "explainers": ["--models", "mnist", "--batch", "2", "--repeats", "1", "--ig-steps", "2", "--sg-samples", "2",
                   "--no-memory", "--threads", "2"],
    "attack_step": ["--batches", "1", "2", "--repeats", "1", "--warmup", "1", "--no-zennit", "--threads", "2"],
    "create_graph_memory": ["--batch", "2", "--steps", "2", "--samples", "2", "--chunks", "none,2", "--no-captum",
                            "--threads", "2"],
    "modern_cnns": ["--quick", "--threads", "2"],
    "transformer_lrp": ["--quick", "--threads", "2"],
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_runs_and_prints_its_targets(name, capsys, tmp_path):
    path = list(sys.path)  # a script puts its folder on sys.path when imported or run
    module = __import__(name)
    argv = list(SMOKE[name])
    if name in ("paper_protocol", "scaling"):
        argv += ["--csv", str(tmp_path / f"{name}.csv")]
    threads = torch.get_num_threads()
    try:
        module.main(argv)
    finally:  # the scripts set the thread count process-wide
        torch.set_num_threads(threads)
        sys.path[:] = path
    out = capsys.readouterr().out
    assert re.search(r"\b(ok|miss)\b", out), out[-2000:]
    assert "nan" not in out.lower().replace("nanos", ""), out[-2000:]
    if name in ("paper_protocol", "scaling"):
        import pandas as pd

        table = pd.read_csv(tmp_path / f"{name}.csv")
        assert len(table) and table.notna().any().all()
