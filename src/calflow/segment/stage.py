"""What the workflow rules call: train the segmenter on annotated sessions, segment, evaluate.

* :func:`train_from_sessions`: every training session's inputs (summary + keyframe projections)
  and masks become one image; its field of view is split into a training region (the left
  ``1 - validation_fraction`` of the columns) and a validation region (the rest), so the
  best-by-F1 checkpoint is chosen on pixels the network never trained on. Writes the weights-only
  segmenter file and a metrics JSON. Training starts from ``init_weights`` (the bundled generalist,
  :func:`bundled_segmenter`, with ``segment.init: pretrained``) when its architecture and input
  channels match the section's, else from scratch (noted in the metrics). With ``pretrained`` set,
  the given segmenter file is checked and copied instead (``source`` says why: a file the config
  gave, or the generalist because no session has masks to train on).
* :func:`evaluate_session`: footprints.zarr against a session's masks: IoU >= 0.5 Hungarian
  F1 and the Neurofinder centroid criterion, written as JSON.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.metrics import evaluate_instances, masks_to_labels, read_masks
from calflow.segment.data import DEFAULT_CHANNELS, Sample, load_inputs
from calflow.segment.store import (
    read_segment_eval,
    write_evaluation_summary,
    write_segment_eval,
    write_segmenter_metrics,
)

# calflow.segment.train (and with it torch, ~1 CPU-s) is imported where training or its parameters
# are used, not at module import: evaluate_session runs once per session and needs neither.
BUNDLED_NAME = "segmenter_pretrained.pt"
GENERALIST_NOTE = ("no session with masks to train on: the bundled generalist segmenter (trained on simulated "
                   "sessions only, calflow.segment.pretrain) is used")
GENERALIST_CHOSEN_NOTE = ("segment.init: generalist: the bundled generalist segmenter (trained on simulated sessions "
                          "only, calflow.segment.pretrain) is used without fine-tuning; sessions with masks are "
                          "scored, not trained on")


def bundled_segmenter() -> Path:
    """The generalist segmenter shipped in the checkout's resources/ (see calflow.segment.pretrain)."""
    return Path(__file__).resolve().parents[3] / "resources" / BUNDLED_NAME


def init_compatible(init_weights: str | Path, section: Mapping[str, Any], seed: int = 0) -> str | None:
    """None when the segmenter file can initialise training with ``section``'s settings, else why not."""
    from calflow.segment.infer import read_segmenter
    from calflow.segment.train import TrainParams

    blob = read_segmenter(init_weights, fix=INIT_FIX)
    channels = list(section.get("channels") or DEFAULT_CHANNELS)
    arch = TrainParams.from_config(train_params(section, seed)).arch(len(channels))
    if dict(blob["arch"]) != arch:
        return f"its architecture {dict(blob['arch'])} differs from the configured {arch}"
    if list(blob.get("meta", {}).get("channels") or DEFAULT_CHANNELS) != channels:
        return f"its input channels {blob['meta'].get('channels')} differ from the configured {channels}"
    return None
POST_KEYS = ("prob_threshold", "cue_threshold", "min_size")
INIT_FIX = "give a file written by calflow, or set segment.init: scratch"
log = logging.getLogger("calflow.segment")


def keyframe_stack(keyframes_store: str | Path) -> np.ndarray:
    """(T, H, W) float32 keyframes of a session, robustly normalised (the detr trace term's frames)."""
    from calflow.keyframes.store import read_keyframes
    from calflow.segment.data import normalise

    return normalise(np.asarray(read_keyframes(keyframes_store).frames, np.float32))


def train_params(section: Mapping[str, Any], seed: int = 0) -> dict:
    """The TrainParams fields of a ``segment`` config section.

    Post-processing thresholds given in the section are used for the validation F1; the workflow
    leaves them out so that tuning them re-runs inference only (validation then uses the defaults).
    """
    from calflow.segment.train import TrainParams

    p = {k: v for k, v in section.items() if k in TrainParams.__dataclass_fields__}
    post = {k: section[k] for k in POST_KEYS if k in section}
    if post:
        p["post"] = {**TrainParams().post, **post}
    p["seed"] = int(seed)
    return p


def train_from_sessions(sessions: Sequence[Mapping[str, str]], section: Mapping[str, Any], out_model: str | Path,
                        out_metrics: str | Path, *, checkpoint_dir: str | Path, seed: int = 0,
                        pretrained: str | None = None, source: str = "given",
                        init_weights: str | Path | None = None, generalist_chosen: bool = False) -> dict:
    """Train on ``sessions`` (dicts with session, summary, keyframes, masks) or copy ``pretrained``
    (``source`` "given", or "generalist": chosen by ``segment.init: generalist`` when
    ``generalist_chosen``, else because no session has masks to train on)."""
    if pretrained:
        from calflow.segment.infer import load_segmenter

        try:
            _, info = load_segmenter(pretrained)
        except CalflowInputError:  # already one line naming the file (calflow.checkpoint)
            raise
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
            raise CalflowInputError(f"cannot load the pretrained segmenter ({type(err).__name__}: {err})",
                                    file=pretrained, fix="give a file written by calflow's train_segmenter") from err
        Path(out_model).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pretrained, out_model)
        metrics = {"pretrained": str(pretrained), "source": source, "arch": info["arch"], "meta": info["meta"]}
        if source == "generalist":
            metrics["reason"] = "segment.init" if generalist_chosen else "no_masks"
            metrics["note"] = GENERALIST_CHOSEN_NOTE if generalist_chosen else GENERALIST_NOTE
        write_segmenter_metrics(out_metrics, metrics)
        return metrics
    from calflow.segment.train import train

    channels = list(section.get("channels") or DEFAULT_CHANNELS)
    frac = float(section.get("validation_fraction", 0.25))
    tr, va = [], []
    for s in sessions:
        image = load_inputs(s["summary"], s["keyframes"], channels)
        h, w = image.shape[1:]
        labels = masks_to_labels(read_masks(s["masks"], (h, w)), (h, w))
        sample = Sample.from_labels(image, labels, s["session"])
        if section.get("network") == "detr" and float(section.get("trace_weight", 0.0)) > 0:
            sample.frames = keyframe_stack(s["keyframes"])  # trace term: the annotations' mask-averaged traces
        cut = int(round(w * (1 - frac)))
        if frac > 0 and 0 < cut < w:
            tr.append(sample.crop(slice(None), slice(0, cut)))
            va.append(sample.crop(slice(None), slice(cut, None)))
        else:
            tr.append(sample)
    meta = {"channels": channels, "train_sessions": [s["session"] for s in sessions], "validation_fraction": frac}
    init_note = None
    if init_weights is not None:
        try:
            init_note = init_compatible(init_weights, section, seed)
        except CalflowInputError:  # already one line naming the file (calflow.checkpoint)
            raise
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
            raise CalflowInputError(f"cannot load the initial segmenter weights ({type(err).__name__}: {err})",
                                    file=str(init_weights), fix=INIT_FIX) from err
        if init_note is not None:
            log.warning("segment.init: pretrained, but %s: training from scratch", init_note)
            init_note = f"trained from scratch: the pretrained weights do not fit ({init_note})"
            init_weights = None
    result = train(tr, va, train_params(section, seed), checkpoint_dir, out_path=out_model, meta=meta,
                   init_weights=init_weights)
    metrics = {**meta, **result, "source": "trained", **({"init_note": init_note} if init_note else {})}
    write_segmenter_metrics(out_metrics, metrics)
    return metrics


def evaluate_session(footprints_store: str | Path, masks: str | Path, out_json: str | Path, *, session: str = "",
                     heldout: bool = True, iou_threshold: float = 0.5, max_distance: float = 5.0) -> dict:
    """Score a session's footprints against its masks; write and return the JSON dict."""
    from calflow.segment.footprints import read_footprints

    fp, attrs = read_footprints(footprints_store)
    shape = tuple(attrs["frame_shape"])
    true = read_masks(masks, shape)
    res = evaluate_instances(true, fp > 0, shape, iou_threshold=iou_threshold, max_distance=max_distance)
    out = {"session": session, "heldout": bool(heldout), "masks": str(masks), **res,
           "f1": res["iou"]["f1"], "n_true": int(true.shape[0]), "n_pred": int(fp.shape[0])}
    write_segment_eval(out_json, out)
    return out


def summarise_evaluations(files: Sequence[str | Path], out_json: str | Path) -> dict:
    """Mean F1 over held-out and over training sessions (from the per-session JSONs)."""
    evals = [read_segment_eval(f) for f in files]
    out: dict[str, Any] = {"sessions": {e["session"]: {k: e[k] for k in ("heldout", "f1")} | {
        "centroid_f1": e["centroid"]["f1"], "precision": e["iou"]["precision"], "recall": e["iou"]["recall"]}
        for e in evals}}
    for name, sel in (("heldout", True), ("training", False)):
        f1 = [e["f1"] for e in evals if e["heldout"] is sel]
        out[f"{name}_mean_f1"] = float(np.mean(f1)) if f1 else None
        out[f"{name}_n_sessions"] = len(f1)
    write_evaluation_summary(out_json, out)
    return out
