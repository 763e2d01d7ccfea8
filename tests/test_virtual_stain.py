"""Virtual staining (calflow.virtual_stain): block cutting, labelling and rebuilding (exact, also on
real BBBC039 nuclei masks), the paired-image simulator, and the train / search / evaluate stage on
tiny simulated pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calflow.errors import CalflowInputError
from calflow.io import open_group
from calflow.virtual_stain import blocks as B
from calflow.virtual_stain.sheet import load_sheet
from calflow.virtual_stain.simulate import simulate_pair, write_pair
from calflow.virtual_stain.stage import read_image, run_dataset

ROOT = Path(__file__).resolve().parents[1]
BBBC039 = ROOT.parent / "shared" / "data" / "bbbc039-subset20"
SCHEMAS = ROOT / "workflow" / "schemas"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cut_and_rebuild_are_exact_inverses():
    rng = np.random.default_rng(0)
    img = rng.random((37, 50)).astype(np.float32)
    blocks = B.cut_blocks(img, 8)
    assert blocks.shape == (4 * 6, 8, 8)
    np.testing.assert_array_equal(blocks[7], img[8:16, 8:16])  # row-major: block (1, 1)
    vals = blocks.mean(axis=(1, 2))
    rebuilt = B.rebuild(vals.reshape(4, 6), 8, img.shape)
    assert np.isnan(rebuilt[32:]).all() and np.isnan(rebuilt[:, 48:]).all()
    np.testing.assert_array_equal(B.cut_blocks(rebuilt, 8).mean(axis=(1, 2), dtype=np.float64), vals)


def test_block_labels_follow_the_area_fraction():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True          # block (0, 0) full
    mask[4:6, 4:8] = True        # block (1, 1) half
    mask[0, 4] = True            # block (0, 1) 1/16
    frac = B.block_fractions(mask, 4)
    np.testing.assert_array_equal(frac, [[1.0, 1 / 16], [0.0, 0.5]])
    np.testing.assert_array_equal(B.block_labels(frac, 0.5), [[True, False], [False, True]])
    np.testing.assert_array_equal(B.block_labels(frac, 0.6), [[True, False], [False, False]])


@pytest.mark.skipif(not BBBC039.is_dir(), reason="../shared/data/bbbc039-subset20 not present")
def test_block_labels_and_maps_on_real_nuclei_masks():
    """BBBC039 (real fluorescence nuclei with manual masks): the block fractions of the masks, rebuilt
    into a full-size map, reproduce the masks' area exactly, and Otsu-binarised fluorescence labels
    blocks as the masks do (block labelling of real images)."""
    names = sorted(p.stem for p in (BBBC039 / "masks").glob("*.png"))[:3]
    assert names
    agree = []
    for name in names:
        mask = read_image(BBBC039 / "masks" / f"{name}.png") > 0
        fluo = read_image(BBBC039 / "images" / f"{name}.tif")
        assert mask.shape == fluo.shape == (520, 696)
        frac = B.block_fractions(mask, 16)
        rebuilt = B.rebuild(frac, 16, mask.shape)
        ys, xs = B.covered(mask.shape, 16)
        assert float(np.nanmean(rebuilt)) == pytest.approx(mask[ys, xs].mean(), abs=1e-6)
        np.testing.assert_array_equal(B.block_fractions(rebuilt[ys, xs] > 0, 16) > 0, frac > 0)
        np.testing.assert_array_equal(B.cut_blocks(rebuilt, 16).mean(axis=(1, 2), dtype=np.float64), frac.ravel())
        lab_mask = B.block_labels(frac, 0.25)
        lab_fluo = B.block_labels(B.block_fractions(B.binarise(fluo, "otsu"), 16), 0.25)
        agree.append((lab_mask == lab_fluo).mean())
    assert min(agree) > 0.9, agree


def test_simulated_pairs_mark_the_positive_cells():
    pair = simulate_pair({"height": 96, "width": 96, "n_cells": 12}, seed=4)
    pos = pair["positive"]
    assert 0 < pos.mean() < 0.6 and pair["label_free"].shape == pair["fluorescence"].shape == (96, 96)
    fl = pair["fluorescence"]
    assert fl[pos].mean() > fl[~pos].mean() + 0.4          # the marker is bright on positive cells only
    again = simulate_pair({"height": 96, "width": 96, "n_cells": 12}, seed=4)
    np.testing.assert_array_equal(again["label_free"], pair["label_free"])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(6):
        lf, fl = d / f"p{i}_lf.tif", d / f"p{i}_fl.tif"
        write_pair(str(lf), str(fl), {"height": 96, "width": 96, "n_cells": 12}, seed=10 + i)
        rows.append({"image": f"p{i}", "label_free": str(lf), "fluorescence": str(fl),
                     "split": "train" if i < 4 else "test"})
    return d, rows


def test_stage_trains_searches_and_maps(pairs, tmp_path):
    _, rows = pairs
    params = {"n_trials": 2, "epochs": 6, "block_size": 16}
    r = run_dataset(rows, tmp_path / "out", params, dataset="tiny")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["test"] == r["test"] and len(saved["search"]["trials"]) == 2
    assert r["test"]["roc_auc"] > 0.9, r["test"]            # the striation cue is learnable even tiny
    assert r["n_test_images"] == 2 and r["test"]["n_blocks"] == 2 * 36
    g = open_group(tmp_path / "out" / "maps.zarr")
    prob = np.asarray(g["p4/probability"])
    assert prob.shape == (96, 96) and np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1
    np.testing.assert_allclose(B.cut_blocks(prob, 16)[:, 0, 0], np.asarray(g["p4/block_probability"]).ravel())
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"examples.png", "fractions.png", "roc.png"}
    state = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert "state_dict" in state
    # seeded: the same inputs give the same numbers
    again = run_dataset(rows, tmp_path / "again", params, dataset="tiny")
    assert again["test"] == r["test"] and again["pearson_r"] == r["pearson_r"]


def test_bad_inputs_are_one_error_and_no_output(pairs, tmp_path):
    d, rows = pairs
    bad = [dict(r) for r in rows]
    bad[0]["fluorescence"] = str(d / "missing.tif")
    with pytest.raises(CalflowInputError, match="missing.tif"):
        run_dataset(bad, tmp_path / "out", {"n_trials": 1, "epochs": 1})
    small = d / "small.npy"
    np.save(small, np.zeros((40, 40), np.float32))
    bad = [dict(r) for r in rows]
    bad[1]["fluorescence"] = str(small)
    with pytest.raises(CalflowInputError, match="differ in shape"):
        run_dataset(bad, tmp_path / "out", {"n_trials": 1, "epochs": 1})
    with pytest.raises(CalflowInputError, match="min_fraction"):
        run_dataset(rows, tmp_path / "out", {"min_fraction": 0})
    assert not (tmp_path / "out").exists()


def test_sheet_is_validated(tmp_path, pairs):
    d, rows = pairs
    sheet = tmp_path / "vs.tsv"
    head = "dataset\timage\tlabel_free\tfluorescence\tsplit\n"
    lines = [f"a\t{r['image']}\t{r['label_free']}\t{r['fluorescence']}\t{r['split']}\n" for r in rows]
    sheet.write_text(head + "".join(lines))
    assert sorted(load_sheet(sheet, SCHEMAS)["split"].unique()) == ["test", "train"]
    sheet.write_text(head + lines[0].replace("\ttrain", "\tvalidation"))
    with pytest.raises(CalflowInputError, match="row 2.*split"):
        load_sheet(sheet, SCHEMAS)
    sheet.write_text(head + lines[0])
    with pytest.raises(CalflowInputError, match="training and test"):
        load_sheet(sheet, SCHEMAS)
    sheet.write_text(head + lines[0].replace(rows[0]["label_free"], str(d / "nope.tif")) + lines[-1])
    with pytest.raises(CalflowInputError, match="does not exist"):
        load_sheet(sheet, SCHEMAS)
