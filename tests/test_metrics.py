"""calflow.metrics: Hungarian IoU matching, Neurofinder centroid criterion, pixel IoU, mask readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from calflow.errors import CalflowInputError
from calflow.metrics import (
    as_masks,
    centroids,
    evaluate_instances,
    iou_matrix,
    masks_to_labels,
    match_centroids,
    match_iou,
    pixel_iou,
    read_masks,
    restrict,
)


def squares(coords, size=4, shape=(32, 32)):
    lab = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(coords, start=1):
        lab[y:y + size, x:x + size] = i
    return lab


def test_identical_masks_score_one():
    lab = squares([(0, 0), (10, 10), (20, 5)])
    r = match_iou(lab, lab)
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)
    assert r["mean_iou_matched"] == 1.0 and r["n_matched"] == 3


def test_iou_threshold_and_counts():
    true = squares([(0, 0), (10, 10), (20, 20)])
    # first shifted by 1 px (IoU 12/20 = 0.6: hit), second by 2 px (IoU 8/24 = 0.33: miss), third missing, one extra
    pred = squares([(0, 1), (10, 12), (2, 26)])
    iou = iou_matrix(as_masks(true), as_masks(pred))
    assert iou[0, 0] == pytest.approx(12 / 20) and iou[1, 1] == pytest.approx(8 / 24)
    r = match_iou(true, pred)
    assert r["n_matched"] == 1 and r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    assert match_iou(true, pred, threshold=0.3)["n_matched"] == 2


def test_hungarian_assignment_is_one_to_one():
    # one big predicted mask covering two true cells matches at most one of them
    true = squares([(0, 0), (0, 4)], size=4)
    pred = np.zeros_like(true)
    pred[0:4, 0:6] = 1
    r = match_iou(true, pred, threshold=0.1)
    assert r["n_matched"] == 1 and r["pairs"] in ([[0, 0]], [[1, 0]])


def test_empty_cases():
    empty = np.zeros((8, 8), int)
    assert match_iou(empty, empty)["f1"] == 1.0
    assert match_iou(squares([(0, 0)], shape=(8, 8)), empty)["f1"] == 0.0
    assert match_centroids(np.zeros((0, 2)), np.zeros((0, 2)))["f1"] == 1.0


def test_centroid_criterion():
    true = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0]])
    pred = np.array([[13.0, 10.0], [30.0, 36.0], [90.0, 90.0], [51.0, 51.0]])
    r = match_centroids(true, pred, max_distance=5)
    assert r["n_matched"] == 2 and r["precision"] == 0.5 and r["recall"] == pytest.approx(2 / 3)


def test_overlapping_masks_kept_as_stack():
    stack = np.zeros((2, 16, 16), bool)
    stack[0, 2:8, 2:8] = True
    stack[1, 5:11, 5:11] = True  # overlaps the first
    m = as_masks(stack)
    assert m.shape == (2, 256) and m.sum() == 72
    np.testing.assert_allclose(centroids(m, (16, 16)), [[4.5, 4.5], [7.5, 7.5]])
    assert evaluate_instances(stack, stack, (16, 16))["iou"]["f1"] == 1.0


def test_pixel_iou():
    a = np.zeros((4, 4))
    a[:2] = 1
    b = np.zeros((4, 4))
    b[1:3] = 1
    assert pixel_iou(a, b) == pytest.approx(4 / 12)
    assert pixel_iou(np.zeros(3), np.zeros(3)) == 1.0


def test_read_label_image_and_regions_json(tmp_path):
    lab = squares([(0, 0), (10, 10)], shape=(20, 24))
    tifffile.imwrite(tmp_path / "m.tif", lab.astype(np.uint16))
    np.save(tmp_path / "m.npy", lab)
    regions = [{"id": 0, "coordinates": [[y, x] for y in range(0, 4) for x in range(0, 4)]},
               {"id": 1, "coordinates": [[y, x] for y in range(10, 14) for x in range(10, 14)] + [[99, 99]]}]
    (tmp_path / "regions.json").write_text(json.dumps(regions))
    for name in ("m.tif", "m.npy", "regions.json"):
        m = read_masks(tmp_path / name, (20, 24))
        np.testing.assert_array_equal(masks_to_labels(m, (20, 24)), lab)
    with pytest.raises(CalflowInputError, match="shape"):
        read_masks(tmp_path / "m.tif", (30, 30))


def test_restrict_by_centroid():
    lab = squares([(0, 0), (10, 20)])
    m = restrict(as_masks(lab), (32, 32), (slice(None), slice(16, None)))
    assert m.shape[0] == 1


def test_regions_outside_the_frame_are_dropped_with_one_warning(tmp_path, caplog):
    """Pixels of regions.json outside the frame are dropped (a crop reads this way), and the user is
    told: one warning naming the file, the regions that reached outside and those left out."""
    from calflow.metrics import read_neurofinder_regions

    regions = [{"coordinates": [[1, 1], [1, 2]]},                 # inside
               {"coordinates": [[7, 7], [7, 8], [8, 8]]},         # partly outside an 8 x 8 frame
               {"coordinates": [[20, 20], [21, 20]]},             # entirely outside
               {"coordinates": []}]                               # empty: not an outside region
    path = tmp_path / "regions.json"
    path.write_text(json.dumps(regions))
    with caplog.at_level("WARNING", logger="calflow.metrics"):
        masks = read_neurofinder_regions(path, (8, 8))
    assert masks.shape == (2, 64) and masks[1].nnz == 1 and masks[1, 7 * 8 + 7]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert "2 of 4 regions reach outside the 8 x 8 frame" in warnings[0] and "(1 regions lay entirely outside" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="calflow.metrics"):
        read_neurofinder_regions(path, (32, 32))  # everything inside: silent
    assert not caplog.records
