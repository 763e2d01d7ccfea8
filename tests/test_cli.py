"""The `calflow` command line: simulate -> ingest -> validate, and clean errors (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from calflow.cli import main
from calflow.io import MovieReader

ROOT = Path(__file__).resolve().parents[1]


def test_simulate_then_ingest(tmp_path, capsys):
    out = tmp_path / "s1"
    assert main(["simulate", "--out", str(out), "--seed", "5", "--n-frames", "60", "--height", "40",
                 "--width", "40", "--n-cells", "6", "--n-targets", "3", "--n-pairs", "1"]) == 0
    assert (out / "movie.tif").exists() and (out / "ground_truth.npz").exists()
    assert main(["ingest", str(out / "movie.tif"), str(tmp_path / "raw.zarr"), "--fps", "30"]) == 0
    assert "60 frames" in capsys.readouterr().out
    assert MovieReader(tmp_path / "raw.zarr").shape == (60, 40, 40)


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.zeros((3, 4), np.float32))
    assert main(["ingest", str(tmp_path / "nope.tif"), str(tmp_path / "raw.zarr"), "--fps", "30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calflow error: ") and "nope.tif: the movie file does not exist" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_validate_shipped_config():
    proc = subprocess.run([sys.executable, "-m", "calflow", "validate"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "12 session(s): m1_POD0, m1_POD3, m2_POD0, m2_POD3, m3_POD0" in proc.stdout  # six animals x POD0, POD3


def test_validate_reports_bad_sheet(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("session\tmovie\tcondition\tfps\nx\tmissing.tif\tA\t30\n")
    proc = subprocess.run(
        [sys.executable, "-m", "calflow", "validate", "--config", str(ROOT / "config" / "config.yaml"),
         "--sessions", str(sheet)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "s.tsv: row 2, field 'movie': file 'missing.tif' does not exist" in proc.stderr
