"""Decoding section: cross-validated decoding of the stimulus per session (``decode.json``),
accuracy per classifier against the dummy, and the confusion matrices."""

from __future__ import annotations

from typing import Any

from calflow.decode.store import read_decode
from calflow.report.page import ReportContext, SessionInfo, Table, figure_from_png, fmt, section


def _decode_p_methods(r: dict) -> str:
    """How decode.json's p-values were made: 'refit' (labels permuted, classifier refitted) and/or
    'folds' (held-out labels permuted against fixed predictions), per classifier."""
    m = sorted({v.get("p_method") for k, v in (r.get("classifiers") or {}).items()
                if isinstance(v, dict) and v.get("p_method")})
    return " / ".join({"refit": "refit test", "folds": "fold test"}.get(x, x) for x in m) or "none"


@section("decode", "Decoding", scope="session", order=65)
def decode_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Cross-validated decoding of the stimulus (decode.json): accuracy per classifier vs the dummy."""
    path = s.dir / "decode.json"
    if not path.is_file():
        return None
    r = read_decode(path)
    p = r.get("params", {})
    facts = [
        ("trials decoded", f"{fmt(r.get('n_trials'))} of {fmt(r.get('n_trials_total'))}, {len(r.get('classes', []))} "
                           f"stimulus classes (chance {fmt(r.get('chance', float('nan')), 2)})"),
        ("neurons", f"{fmt(r.get('n_neurons'))} ({p.get('traces', '?')}"
                    f"{', accepted only' if p.get('accepted_only') else ''})"),
        ("response", f"mean over {p.get('window_s')} s minus {p.get('baseline_s')} s around onset"),
        ("spontaneous activity", f"z-scored over {fmt(r.get('spontaneous_frames'))} frames"
                                 f"{'' if p.get('zscore', True) else ' (off)'}; {fmt(r.get('pcs_removed', 0))} PCs removed"),
        ("cross-validation", f"{r.get('cv') or str(p.get('folds')) + '-fold'}, {p.get('n_permutations')} label "
                             f"permutations (p-value: {_decode_p_methods(r)})"),
    ]
    notes = []
    if r.get("dropped_classes"):
        notes.append(f"Classes with fewer trials than folds were left out: "
                     f"{', '.join(f'{k} ({v})' for k, v in r['dropped_classes'].items())}.")
    if r.get("status") != "ok":
        notes.append(f"Not decoded: {r.get('note', r.get('status'))}.")
        return {"facts": facts, "notes": notes}
    rows = []
    for name, c in r["classifiers"].items():
        ci = c.get("ci95", [float("nan")] * 2)
        rows.append([name, fmt(c["accuracy"], 3), f"{fmt(ci[0], 3)}–{fmt(ci[1], 3)}",
                     f"{fmt(c['fold_accuracy_mean'], 3)} ± {fmt(c['fold_accuracy_std'], 3)}",
                     fmt(c["p_value"], 3) if "p_value" in c else "–"])
    table = Table(columns=["classifier", "accuracy", "95% CI (Wilson)", "per fold mean ± sd", "permutation p"],
                  rows=rows, numeric=[False, True, False, False, True],
                  caption="Accuracy of the pooled out-of-fold predictions; dummy = most frequent class. p: share of "
                          "label permutations scoring at least the real accuracy (smallest possible 1/(n+1)).")
    figures = [f for f in [figure_from_png(s.plots / "decode" / "confusion.png", "Confusion matrices",
                                           "Rows: stimulus given; columns: predicted; each row normalised.", wide=True)]
               if f is not None]
    return {"facts": facts, "notes": notes, "tables": [table], "figures": figures}
