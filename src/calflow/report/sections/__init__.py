"""The report's sections, one module per stage: importing this package registers every section
(:func:`calflow.report.page.section`). Each module reads only its stage's outputs."""

from calflow.report.sections import (  # noqa: F401 - imported to register their sections
    classify,
    cnmf,
    compare,
    decode,
    motion,
    overview,
    segment,
    tracking,
    virtual_stain,
)
