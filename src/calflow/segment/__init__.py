"""Cell segmenter: U-Net / DCN networks, training and inference (stages ``train_segmenter``, ``segment``).

See docs/segment.md. Submodules: :mod:`~calflow.segment.model` (networks),
:mod:`~calflow.segment.data` (inputs, targets, augmentation), :mod:`~calflow.segment.train`
(training loop, checkpoints), :mod:`~calflow.segment.infer` (prediction, watershed, footprints),
:mod:`~calflow.segment.footprints` (the footprints.zarr reader, without torch),
:mod:`~calflow.segment.stage` (what the workflow rules call).
"""
