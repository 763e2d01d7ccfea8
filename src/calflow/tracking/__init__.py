"""Cross-session cell tracking of one animal (docs/tracking.md): :mod:`~calflow.tracking.params`,
:mod:`~calflow.tracking.register` (summary-image registration), :mod:`~calflow.tracking.match`
(footprint scores, threshold, assignment, union), :mod:`~calflow.tracking.store` (tracking.zarr),
:mod:`~calflow.tracking.stage` (the rules' entry points)."""
