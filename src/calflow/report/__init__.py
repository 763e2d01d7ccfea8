"""The HTML report: one self-contained page (``results/report/index.html``) a lab can read and share.

Images are inlined as ``data:`` URIs and the CSS and JavaScript are inline, so the page can be
mailed or archived as one file. The page is assembled from sections registered with
:func:`section`; each returns a dict for its template macro, or ``None`` when its stage's outputs
are absent (docs/report.md). Layout: ``page`` (building blocks, context, registry), ``provenance``,
``render`` (:func:`build_report`, which ``workflow/scripts/report.py`` calls; the library imports
no Snakemake), ``templates/`` and ``sections/`` (one module per stage).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are drawn off-screen; set before any module below imports pyplot

from calflow.report.page import (  # noqa: E402
    CNMF_COLOUR,
    CONDITION_COLOURS,
    SCOPES,
    SECTIONS,
    SEGMENTER_COLOUR,
    TRUTH_COLOUR,
    Figure,
    Link,
    RenderedSection,
    ReportContext,
    SectionSpec,
    SessionInfo,
    Table,
    condition_anchor,
    contour_overlay,
    figure_from_mpl,
    figure_from_png,
    fmt,
    png_data_uri,
    section,
)
from calflow.report.provenance import VERSION_PACKAGES, git_commit, package_versions, rule_timings  # noqa: E402
from calflow.report.render import (  # noqa: E402
    PAGE_TEMPLATE,
    SECTIONS_TEMPLATE,
    TEMPLATE_DIR,
    build_report,
    render_report,
    sessions_from_records,
)
from calflow.report.sections.classify import classifier_section, gradcam_section, zncc_section  # noqa: E402
from calflow.report.sections.cnmf import cnmf_section  # noqa: E402
from calflow.report.sections.compare import compare_section  # noqa: E402
from calflow.report.sections.decode import decode_section  # noqa: E402
from calflow.report.sections.motion import (  # noqa: E402
    load_motion,
    load_summary,
    load_truth_eval,
    motion_metrics,
    motion_section,
    summary_section,
    truth_section,
)
from calflow.report.sections.overview import (  # noqa: E402
    condition_overview_section,
    overview_section,
    provenance_section,
)
from calflow.report.sections.segment import segment_section, segmenter_source  # noqa: E402
from calflow.report.sections.virtual_stain import virtual_stain_section  # noqa: E402

__all__ = [
    "CNMF_COLOUR", "CONDITION_COLOURS", "PAGE_TEMPLATE", "SCOPES", "SECTIONS", "SECTIONS_TEMPLATE",
    "SEGMENTER_COLOUR", "TEMPLATE_DIR", "TRUTH_COLOUR", "VERSION_PACKAGES", "Figure", "Link", "RenderedSection",
    "ReportContext", "SectionSpec", "SessionInfo", "Table", "build_report", "classifier_section", "cnmf_section",
    "compare_section", "condition_anchor", "condition_overview_section", "contour_overlay", "decode_section",
    "figure_from_mpl", "figure_from_png", "fmt", "git_commit", "gradcam_section", "load_motion", "load_summary",
    "load_truth_eval", "motion_metrics", "motion_section", "overview_section", "package_versions", "png_data_uri",
    "provenance_section", "render_report", "rule_timings", "section", "segment_section", "segmenter_source",
    "sessions_from_records", "summary_section", "truth_section", "virtual_stain_section", "zncc_section",
]
