"""Seeded CNMF (stage ``cnmf``): HALS model, OASIS deconvolution, evaluation, NWB export.

Modules: :mod:`~calflow.cnmf.model` (the fit), :mod:`~calflow.cnmf.deconv` (OASIS),
:mod:`~calflow.cnmf.evaluate` (merge, metrics, dF/F), :mod:`~calflow.cnmf.stage` (cnmf.zarr),
:mod:`~calflow.cnmf.nwb` (NWB export), :mod:`~calflow.cnmf.caiman` (optional CaImAn backend).
"""
