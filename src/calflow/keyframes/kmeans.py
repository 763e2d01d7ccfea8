"""Method ``kmeans``: block-averaged frames reduced by incremental PCA and clustered by k-means; the
medoid of every cluster is a keyframe (:func:`kmeans_keyframes`). scikit-learn is imported on first use."""

from __future__ import annotations

import numpy as np

from calflow.io import MovieReader
from calflow.keyframes.params import KeyframeParams


def _down(x: np.ndarray, f: int) -> np.ndarray:
    n, h, w = x.shape
    h2, w2 = h // f * f, w // f * f
    return x[:, :h2, :w2].reshape(n, h2 // f, f, w2 // f, f).mean(axis=(2, 4)).reshape(n, -1)


def kmeans_keyframes(reader: MovieReader, p: KeyframeParams) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distance of each frame to its cluster centre) by PCA + k-means medoids."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import IncrementalPCA

    t = reader.shape[0]
    n_comp = min(p.n_components, t, (reader.shape[1] // p.downsample) * (reader.shape[2] // p.downsample))
    ipca = IncrementalPCA(n_components=n_comp)
    pending = None
    for _, block in reader.iter_blocks(p.batch_size):
        x = _down(block.astype(np.float32), p.downsample)
        pending = x if pending is None else np.concatenate([pending, x])
        if pending.shape[0] >= n_comp:  # partial_fit needs >= n_components samples per call
            ipca.partial_fit(pending)
            pending = None
    if pending is not None:
        if hasattr(ipca, "components_"):
            if pending.shape[0] >= n_comp:
                ipca.partial_fit(pending)
        else:
            ipca.fit(pending)
    feats = np.concatenate([ipca.transform(_down(b.astype(np.float32), p.downsample))
                            for _, b in reader.iter_blocks(p.batch_size)])
    k = min(p.n_keyframes, t)
    km = KMeans(n_clusters=k, n_init=4, random_state=p.seed).fit(feats)
    dist = np.linalg.norm(feats - km.cluster_centers_[km.labels_], axis=1)
    medoids = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if members.size:
            medoids.append(int(members[np.argmin(dist[members])]))
    return np.unique(np.asarray(medoids, dtype=np.int64)), dist.astype(np.float32)

