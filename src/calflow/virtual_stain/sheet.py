"""The virtual_stain sheet (TSV, one row per image pair), validated before any job starts.

Columns: ``dataset``, ``image`` (unique within its dataset), ``label_free``, ``fluorescence``
(paths), ``split`` (``train`` or ``test``); every dataset needs both splits. Used by the
workflow (virtual_stain.smk) at parse time, like :func:`calflow.config.load_sessions`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calflow.errors import CalflowInputError

SHEET_COLUMNS = ("dataset", "image", "label_free", "fluorescence", "split")


def load_sheet(path: str | Path, schema_dir: str | Path | None = None,
               produced_prefixes: tuple[str, ...] = ("results/",)) -> pd.DataFrame:
    """Read and validate the virtual_stain sheet (TSV); paths not under ``results/`` must exist."""
    from calflow.config import load_schema, validate

    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise CalflowInputError("virtual_stain sheet not found", file=path,
                                fix="set virtual_stain.sheet to an existing TSV, or to '' for no virtual staining") from err
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        raise CalflowInputError(f"missing column(s) {', '.join(missing)}", file=path,
                                fix=f"the header must be {', '.join(SHEET_COLUMNS)}")
    if df.empty:
        raise CalflowInputError("the virtual_stain sheet has no rows", file=path, fix="add one row per image pair")
    schema = load_schema("virtual_stain", schema_dir)
    for i, row in enumerate(df.to_dict("records")):
        row = {k: v.strip() for k, v in row.items()}
        validate(row, schema, file=path, row=i + 2)
        for field in ("label_free", "fluorescence"):
            if not row[field].startswith(produced_prefixes) and not Path(row[field]).exists():
                raise CalflowInputError(f"row {i + 2}, field '{field}': file '{row[field]}' does not exist", file=path,
                                        fix="correct the path (relative paths are taken from the working directory)")
    df = df.apply(lambda c: c.str.strip())
    dup = df.duplicated(["dataset", "image"])
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise CalflowInputError(f"row {i + 2}: image '{df['image'].iloc[i]}' repeats in dataset '{df['dataset'].iloc[i]}'",
                                file=path, fix="give every image of a dataset a unique name")
    for name, rows in df.groupby("dataset"):
        splits = set(rows["split"])
        if splits != {"train", "test"}:
            raise CalflowInputError(f"dataset '{name}' has split(s) {', '.join(sorted(splits))}", file=path,
                                    fix="give every dataset training and test images (split train / test)")
    return df
