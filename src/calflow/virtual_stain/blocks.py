"""Cut images into square blocks, label blocks from binarised fluorescence, rebuild block maps.

Blocks tile the image from its top-left corner; the last ``H % block`` rows and ``W % block``
columns are not covered (they get NaN in rebuilt maps and count in no fraction). All functions
are exact array reshapes (no interpolation), so rebuilding block values and averaging the
rebuilt map over each block gives the block values back bit for bit.
"""

from __future__ import annotations

import numpy as np

from calflow.errors import CalflowInputError


def grid_shape(shape: tuple[int, int], block: int) -> tuple[int, int]:
    """(rows, columns) of whole blocks in an image of ``shape`` (H, W)."""
    if block < 1:
        raise CalflowInputError(f"block size {block} is not a positive integer", file="config",
                                fix="set virtual_stain.block_size to e.g. 16")
    return shape[0] // block, shape[1] // block


def cut_blocks(image: np.ndarray, block: int) -> np.ndarray:
    """(H, W) image -> (rows * cols, block, block) blocks in row-major order (remainder dropped)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise CalflowInputError(f"expected a 2-d image, got shape {image.shape}")
    gy, gx = grid_shape(image.shape, block)
    if gy == 0 or gx == 0:
        raise CalflowInputError(f"image of shape {image.shape} is smaller than one block of {block} px",
                                fix="use a smaller virtual_stain.block_size")
    v = image[: gy * block, : gx * block].reshape(gy, block, gx, block).swapaxes(1, 2)
    return v.reshape(gy * gx, block, block)


def otsu_threshold(image: np.ndarray) -> float:
    """Otsu's threshold of an image (scikit-image)."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.asarray(image, np.float64)))


def binarise(fluorescence: np.ndarray, threshold: float | str = "otsu") -> np.ndarray:
    """(H, W) bool: fluorescence above ``threshold`` (a number in image units, or ``"otsu"``)."""
    img = np.asarray(fluorescence, np.float64)
    t = otsu_threshold(img) if threshold == "otsu" else float(threshold)
    return img > t


def block_fractions(mask: np.ndarray, block: int) -> np.ndarray:
    """(rows, cols) float64: fraction of each block's pixels that are True in ``mask``."""
    mask = np.asarray(mask, bool)
    gy, gx = grid_shape(mask.shape, block)
    return mask[: gy * block, : gx * block].reshape(gy, block, gx, block).mean(axis=(1, 3))


def block_labels(fractions: np.ndarray, min_fraction: float) -> np.ndarray:
    """Positive blocks: positive area fraction >= ``min_fraction`` (in (0, 1])."""
    return np.asarray(fractions) >= min_fraction


def rebuild(values: np.ndarray, block: int, shape: tuple[int, int], fill: float = np.nan) -> np.ndarray:
    """(rows, cols) block values -> (H, W) float32 map; each block's pixels get its value, the
    uncovered right/bottom remainder gets ``fill``."""
    values = np.asarray(values, np.float32)
    gy, gx = grid_shape(shape, block)
    if values.shape != (gy, gx):
        values = values.reshape(gy, gx)
    out = np.full(shape, fill, np.float32)
    out[: gy * block, : gx * block] = np.repeat(np.repeat(values, block, axis=0), block, axis=1)
    return out


def covered(shape: tuple[int, int], block: int) -> tuple[slice, slice]:
    """The region of an image the blocks cover."""
    gy, gx = grid_shape(shape, block)
    return slice(0, gy * block), slice(0, gx * block)
