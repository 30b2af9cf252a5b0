"""calc_metrics.py end to end on a tiny snapshot with a TorchScript stand-in detector given by --detector-path, and its
user errors (one "Error: ..." line, exit status 1, no traceback; no network: the offline case uses localhost).

Oracle for the values: the registry called in-process with the unscripted stand-in module (the CLI must reach the same
numbers through argument parsing, snapshot loading and the TorchScript detector file).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_metrics import heads, one_thread_and_cache, snapshot  # noqa: F401 (fixtures)

import calc_metrics
import legacy
from metrics import detectors, registry


@pytest.fixture
def detector_dir(tmp_path):
    """A folder holding the stand-in detector, scripted, under both published file names."""
    folder = tmp_path / "detectors"
    folder.mkdir()
    scripted = torch.jit.script(detectors.StandInDetector())
    for spec in detectors.DETECTORS.values():
        scripted.save(str(folder / spec.file_name))
    return folder


def _invoke(*args: str):
    return CliRunner().invoke(calc_metrics.main, list(args))


def _fail(*args: str) -> str:
    result = _invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return result.output


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_cli_computes_prints_and_appends(snapshot, heads, detector_dir):  # noqa: F811
    path = snapshot[0]
    common = ["--network", str(path), "--detector-path", str(detector_dir), "--num-gen", "6", "--batch", "4",
              "--workers", "0", "--device", "cpu"]
    result = _invoke(*common, "--metrics", "fid50k_full,pr50k3_full")
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [p["metric"] for p in printed] == ["fid50k_full", "pr50k3_full"]

    det = detectors.StandInDetector()
    G = legacy.load_network(path, which="G_ema").G_ema
    for record in printed:
        expected = registry.calc_metric(record["metric"], registry.MetricOptions(
            G=G, config=snapshot[1], detectors={"inception": det, "vgg16": det}, num_gen=6, batch=4, workers=0))
        assert record["results"] == pytest.approx(expected.results, rel=1e-6, abs=1e-9)
        assert record["num_gen"] == 6 and record["num_real"] == 10
        assert all(math.isfinite(v) for v in record["results"].values())

    again = _invoke(*common, "--metrics", "fid50k_full", "--data", str(heads[0]), "--mask-data", str(heads[1]))
    assert again.exit_code == 0, again.output
    lines = (path.parent / "metric-fid50k_full.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["results"] == printed[0]["results"]
    assert json.loads(lines[0])["snapshot"] == path.name
    assert len((path.parent / "metric-pr50k3_full.jsonl").read_text().splitlines()) == 1


def test_cli_errors(snapshot, heads, monkeypatch, tmp_path):  # noqa: F811
    path = str(snapshot[0])
    assert "--metrics: unknown metric(s) ['fid1']" in _fail("--network", path, "--metrics", "fid1")
    assert "--mask-data: only with --data" in _fail("--network", path, "--mask-data", str(heads[1]))
    assert "--detector-path: " in _fail("--network", path, "--detector-path", str(tmp_path / "none.pt"))
    assert "--device: expected" in _fail("--network", path, "--device", "tpu")
    url = "http://127.0.0.1:9/metrics/inception-2015-12-05.pt"  # refused at once: the offline case without network
    monkeypatch.setitem(detectors.DETECTORS, "inception", detectors.DetectorSpec(url))
    message = _fail("--network", path, "--num-gen", "4", "--workers", "0", "--device", "cpu")
    assert f"could not download {url}" in message and "--detector-path" in message
