"""The networks: :class:`StimNet` (one CNN) and :class:`StimEnsemble` (K of them as one module).

Input (B, C, h, w) float32, C = 2 * context + 1 normalised frames around the labelled one, h and w
multiples of ``2**(depth - 1)`` (:func:`crop_hw`); output N + 1 logits, one per target of the
session's targets table and a last "none" (no target stimulated); an ensemble's are (B, K, N + 1).

Seed ensemble (``members``, default 5): every fold trains K networks that differ only in their
initialisation and batches, as one :class:`StimEnsemble` (grouped convolutions, a per-member head;
one forward/backward trains all K, each member on its own batch). Held-out probabilities are the
mean over members of the sigmoid; calflow.gradcam keeps every member's map and their mean.

Determinism: member m is initialised as a :class:`StimNet` under
``torch.manual_seed(member_seed(seed, fold, m))`` (``1000 * seed + fold`` for member 0).
A group's ``model.pt`` holds tensors and plain values only, ``{"folds": [ensemble state per
fold], "arch", "meta"}``, and loads with ``torch.load(weights_only=True)`` (:func:`load_fold_models`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calflow.checkpoint import load_weights, save_weights
from calflow.io import atomic_output


class StimNet(nn.Module):
    """``depth`` conv blocks (two 3x3 conv + ReLU each, 2x2 max-pool between blocks), then a
    position-aware head (1x1 conv to ``reduce`` channels -> flatten -> dropout -> linear) to ``n_out`` logits.

    The head is not a global average pool: which target was stimulated is a question of *where*
    the activity is. ``features[i]`` is block i; Grad-CAM reads any of them (default the last).
    Input (B, C, h, w) (C = 2 * context + 1 frames around the labelled one) with h, w multiples of ``2**(depth - 1)``.
    """

    def __init__(self, n_out: int, frame_hw: Sequence[int], depth: int = 3, width: int = 16, dropout: float = 0.25,
                 in_channels: int = 1, reduce: int = 4):
        super().__init__()
        chans = [min(width * 2**i, 4 * width) for i in range(depth)]
        blocks: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
            cin = c
        self.features = nn.Sequential(*blocks)
        self.n_out = int(n_out)
        f = 2 ** (depth - 1)
        self.layer_hw = (int(frame_hw[0]) // f, int(frame_hw[1]) // f)
        self.head = nn.Sequential(nn.Conv2d(cin, reduce, 1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(reduce * self.layer_hw[0] * self.layer_hw[1], n_out))

    @property
    def input_hw(self) -> tuple[int, int]:
        """(h, w) of the input the head was built for (frames are cropped to it)."""
        f = 2 ** (len(self.features) - 1)
        return self.layer_hw[0] * f, self.layer_hw[1] * f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class StimEnsemble(nn.Module):
    """``members`` (K) :class:`StimNet` networks as one module, trained and evaluated in one pass.

    Every convolution is grouped (``groups=K``: member k's output channels see only member k's
    input channels, which are channels ``k * c .. (k + 1) * c - 1`` of a layer with K * c
    channels), the head is a grouped 1x1 conv and a per-member linear layer (weight (K, F, n_out),
    applied with einsum). Input (B, K, C, h, w) (member k sees ``x[:, k]``, its own samples) or
    (B, C, h, w) (every member sees the same frames); output logits (B, K, n_out). The members
    share no parameter, so with the loss summed over members each member's gradient, and with
    AdamW (elementwise) each member's update, is that of a network trained alone on its batches.
    ``features[i]`` is block i (activations (B, K * c, h', w')); :meth:`member` extracts member k
    as a plain :class:`StimNet` and :meth:`from_members` stacks plain networks (tests/test_classify.py
    checks that the two agree, output and Grad-CAM).
    """

    def __init__(self, n_out: int, frame_hw: Sequence[int], depth: int = 3, width: int = 16, dropout: float = 0.25,
                 in_channels: int = 1, reduce: int = 4, members: int = 1):
        super().__init__()
        K = self.members = int(members)
        self.in_channels = int(in_channels)
        self.chans = [min(width * 2**i, 4 * width) for i in range(depth)]
        blocks: list[nn.Module] = []
        cin = self.in_channels
        for i, c in enumerate(self.chans):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            # in-place ReLU: the same values and gradients, no second activation tensor (~3 % of training)
            layers += [nn.Conv2d(K * cin, K * c, 3, padding=1, groups=K), nn.ReLU(inplace=True),
                       nn.Conv2d(K * c, K * c, 3, padding=1, groups=K), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
            cin = c
        self.features = nn.Sequential(*blocks)
        self.n_out = int(n_out)
        self.reduce = int(reduce)
        f = 2 ** (depth - 1)
        self.layer_hw = (int(frame_hw[0]) // f, int(frame_hw[1]) // f)
        n_feat = self.reduce * self.layer_hw[0] * self.layer_hw[1]
        self.head_conv = nn.Conv2d(K * cin, K * self.reduce, 1, groups=K)
        self.head_dropout = nn.Dropout(dropout)
        self.head_weight = nn.Parameter(torch.zeros(K, n_feat, self.n_out))
        self.head_bias = nn.Parameter(torch.zeros(K, self.n_out))

    input_hw = StimNet.input_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C = self.members, self.in_channels
        if x.dim() == 4:  # the same frames for every member
            x = x.unsqueeze(1).expand(-1, K, -1, -1, -1)
        B = x.shape[0]
        # channels-last: the grouped convolutions are 2-4 x faster on the CPU (oneDNN) in NHWC
        a = self.features(x.reshape(B, K * C, *x.shape[-2:]).contiguous(memory_format=torch.channels_last))
        r = self.head_dropout(self.head_conv(a).reshape(B, K, -1))  # member k: its (reduce, ly, lx), flattened
        return torch.einsum("bkf,kfo->bko", r, self.head_weight) + self.head_bias

    def member_channels(self, layer_channels: int) -> int:
        """Channels per member of a layer with ``layer_channels`` channels."""
        return layer_channels // self.members

    @classmethod
    def from_members(cls, nets: Sequence[StimNet], arch: Mapping[str, Any]) -> StimEnsemble:
        """The ensemble whose member k has exactly the weights of ``nets[k]`` (same ``arch``)."""
        ens = cls(**_net_kwargs(arch), members=len(nets))
        with torch.no_grad():
            for (name, p), group in zip(_ensemble_params(ens), zip(*(_net_params(n) for n in nets), strict=True),
                                        strict=True):
                vals = [q for _, q in group]
                if name == "head_weight":
                    p.copy_(torch.stack([v.T for v in vals]))
                elif name == "head_bias":
                    p.copy_(torch.stack(vals))
                else:
                    p.copy_(torch.cat(vals))
        return ens

    def member(self, k: int) -> StimNet:
        """Member ``k`` as a plain :class:`StimNet` (a copy of its weights, eval mode, on the CPU)."""
        K = self.members
        net = StimNet(self.n_out, self.input_hw, len(self.features), self.chans[0], self.head_dropout.p,
                      self.in_channels, self.reduce)
        with torch.no_grad():
            for (name, p), (_, q) in zip(_ensemble_params(self), _net_params(net), strict=True):
                if name == "head_weight":
                    q.copy_(p[k].T)
                elif name == "head_bias":
                    q.copy_(p[k])
                else:
                    n = p.shape[0] // K
                    q.copy_(p[k * n : (k + 1) * n])
        return net.eval()


def _net_params(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A :class:`StimNet`'s parameters in the order of :func:`_ensemble_params`."""
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)] + [net.head[0]]
    out = [(n, p) for c in convs for n, p in (("w", c.weight), ("b", c.bias))]
    return [*out, ("head_weight", net.head[3].weight), ("head_bias", net.head[3].bias)]


def _ensemble_params(ens: StimEnsemble) -> list[tuple[str, torch.Tensor]]:
    convs = [m for m in ens.features.modules() if isinstance(m, nn.Conv2d)] + [ens.head_conv]
    out = [(n, p) for c in convs for n, p in (("w", c.weight), ("b", c.bias))]
    return [*out, ("head_weight", ens.head_weight), ("head_bias", ens.head_bias)]


def _net_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    return {"n_out": int(arch["n_out"]), "frame_hw": arch["frame_hw"], "depth": int(arch["depth"]),
            "width": int(arch["width"]), "dropout": float(arch.get("dropout", 0.0)),
            "in_channels": int(arch.get("in_channels", 1)), "reduce": int(arch.get("reduce", 4))}


def build_model(arch: Mapping[str, Any]) -> StimNet:
    """A plain single network (:class:`StimNet`) of ``arch``."""
    return StimNet(**_net_kwargs(arch))


def build_ensemble(arch: Mapping[str, Any]) -> StimEnsemble:
    """The :class:`StimEnsemble` of ``arch`` (``members``; 1 when absent, as in model files from
    before the ensemble)."""
    return StimEnsemble(**_net_kwargs(arch), members=int(arch.get("members", 1)))


def member_seed(seed: int, fold: int, member: int) -> int:
    """Torch seed of member ``member``'s initialisation: ``1000 * seed + fold`` for member 0 (the
    single network of before the ensemble), one drawn from ``[seed, fold, member, 0, 3]`` otherwise."""
    if member == 0:
        return 1000 * int(seed) + int(fold)
    return int(np.random.default_rng([int(seed), int(fold), int(member), 0, 3]).integers(2**62))


def init_ensemble(arch: Mapping[str, Any], seed: int, fold: int) -> StimEnsemble:
    """A fresh ensemble: member k initialised as a :class:`StimNet` under ``member_seed(seed, fold, k)``."""
    nets = []
    for k in range(int(arch.get("members", 1))):
        torch.manual_seed(member_seed(seed, fold, k))
        nets.append(build_model(arch))
    return StimEnsemble.from_members(nets, arch)


def ensemble_state(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fold's state dict as the ensemble's: a plain :class:`StimNet` state (``arch`` without
    ``members``, model files from before the ensemble) becomes a K = 1 ensemble's."""
    if "members" in arch:
        return dict(state)
    net = build_model(arch)
    net.load_state_dict(state)
    return StimEnsemble.from_members([net], arch).state_dict()


def crop_hw(h: int, w: int, depth: int) -> tuple[int, int]:
    """The largest frame size the network takes (a multiple of ``2**(depth-1)``)."""
    f = 2 ** (depth - 1)
    return (h // f) * f, (w // f) * f



def save_fold_models(path: str | Path, models: Sequence[StimEnsemble], arch: Mapping[str, Any],
                     meta: Mapping[str, Any]) -> None:
    """Write a group's ``model.pt`` atomically: every fold's state (CPU copies), ``arch`` and ``meta``
    as plain JSON values (read back by :func:`load_fold_models`)."""
    with atomic_output(path) as tmp:
        save_weights({"folds": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models],
                      "arch": json.loads(json.dumps(arch)), "meta": json.loads(json.dumps(meta))}, tmp)


def load_fold_models(path: str | Path, device: torch.device | str = "cpu") -> tuple[list[StimEnsemble], dict]:
    """Every fold's ensemble of a group's ``model.pt`` (``weights_only=True``) and its arch/meta.

    A model file from before the ensemble (a plain :class:`StimNet` state per fold, no ``members``
    in its arch) loads as a K = 1 ensemble."""
    blob = load_weights(path, "cpu", keys=("folds", "arch", "meta"), fix="delete it and rerun train_classifier")
    arch = blob["arch"]
    models = []
    for state in blob["folds"]:
        m = build_ensemble(arch)
        m.load_state_dict(ensemble_state(arch, state))
        models.append(m.to(device).eval())
    return models, {"arch": {**arch, "members": int(arch.get("members", 1))}, "meta": blob["meta"]}
