"""A small CNN block classifier (label-free block -> logit of "marker positive") and its training.

Blocks are (B, 1, s, s) float32, each image standardised (zero mean, unit sd) before cutting.
Training: AdamW, binary cross-entropy, random dihedral (flip / transpose) augmentation, fixed
epochs; seeded (``torch.manual_seed`` + a seeded generator for batches), so CPU runs are
bit-identical. GPU when present (``device: auto``), the same code path on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calflow.checkpoint import load_weights, save_weights
from calflow.device import resolve_device
from calflow.io import atomic_output

log = logging.getLogger(__name__)


class BlockCNN(nn.Module):
    """conv-BN-ReLU x2, pool, conv-BN-ReLU, pool, conv-ReLU, global average pool, dropout, linear.

    Input (B, 1, s, s) with s >= 4; output (B,) logits.
    """

    def __init__(self, channels: int = 16, dropout: float = 0.2):
        super().__init__()
        c = int(channels)

        def cbr(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*cbr(1, c), *cbr(c, c), nn.MaxPool2d(2), *cbr(c, 2 * c), nn.MaxPool2d(2),
                                      nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


@dataclass
class TrainConfig:
    """One training run's hyperparameters."""

    channels: int = 16
    dropout: float = 0.2
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 8, (1,), generator=g))
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def train_model(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, device: str = "auto", *,
                checkpoint: str | Path | None = None, fingerprint: str = "") -> BlockCNN:
    """Train a :class:`BlockCNN` on blocks ``x`` (N, s, s) float32 with labels ``y`` (N,) {0, 1}.

    ``checkpoint``: a file written after every epoch (model, optimiser, schedule, both random
    states) and resumed from when its ``fingerprint`` matches, so a killed training ends with the
    weights of an uninterrupted one (CPU)."""
    dev = resolve_device(device, key="virtual_stain.device")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = BlockCNN(cfg.channels, cfg.dropout).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32).unsqueeze(1)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    pos = float(yt.mean()) if len(yt) else 0.5
    # balance the classes: positives are often a minority of blocks
    pos_weight = torch.tensor([(1 - pos) / pos if 0 < pos < 1 else 1.0], device=dev)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    n = len(xt)
    steps = max(1, cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        ck = load_weights(checkpoint, "cpu", keys=("model", "optimizer", "scheduler", "generator", "rng", "epoch"),
                          fix="delete it to restart the training")
        if ck.get("fingerprint") == fingerprint:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            g.set_state(ck["generator"])
            torch.set_rng_state(ck["rng"])
            start = int(ck["epoch"])
            log.info("virtual_stain: resuming %s at epoch %d", checkpoint, start)
    model.train()
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = order[i: i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            xb = _augment(xt[idx], g).to(dev)
            loss = loss_fn(model(xb), yt[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if checkpoint is not None:
            with atomic_output(checkpoint) as tmp:
                save_weights({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                              "generator": g.get_state(), "rng": torch.get_rng_state(), "epoch": epoch + 1,
                              "fingerprint": fingerprint}, tmp)
    model.eval()
    return model


@torch.no_grad()
def predict(model: BlockCNN, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N,) float64 probabilities of the blocks ``x`` (N, s, s)."""
    dev = next(model.parameters()).device
    model.eval()
    out = []
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32).unsqueeze(1)
    for i in range(0, len(xt), batch_size):
        out.append(torch.sigmoid(model(xt[i: i + batch_size].to(dev))).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros(0)
