"""Comparison section: the animal-level condition comparison of every map source
(``results/compare/*_vs_*.json``), its controls, per-animal effects and figures."""

from __future__ import annotations

from typing import Any

from calflow.compare.store import read_comparison
from calflow.config import PROFILE_LABELS
from calflow.report.page import ReportContext, Table, _accuracy_text, _ci_text, figure_from_png, fmt, section

_SOURCE_NAMES = {"gradcam": "Grad-CAM (ensemble)", "stim_maps": "stimulus-triggered average (model-free)",
                 "gradcam_shuffled": "Grad-CAM, shuffled-label classifier"}


@section("compare", "Condition comparison", scope="run", order=50)
def compare_section(ctx: ReportContext) -> dict[str, Any] | None:
    """The animal-level comparison of every source (results/compare/*_vs_*.json) and its controls."""
    files = sorted((ctx.results / "compare").glob("*_vs_*.json"))
    if not files:
        return None
    rows, animal_rows, figures, facts = [], [], [], []
    for f in files:
        r = read_comparison(f)
        a, b = r["a"], r["b"]
        head = r["sources"][r["primary"]]
        test = r["test"]
        p_text = fmt(r["p"], 4) if r["p"] is not None else test.get("message", "no test")
        profile = r.get("profile", "default")
        facts.append(("analysis profile", f"{profile}: {PROFILE_LABELS.get(profile, profile)}"
                      + ("" if profile == "default" else " (classify.profile: a sensitivity analysis that "
                                                         "reproduces the seed study, not the default analysis)")))
        facts += [(f"{a} vs {b}", f"effect ({b} - {a}, {r['summary']} ZNCC over {r['statistic']} pattern pairs) "
                                  f"{r['effect']:+.3f}, 95% CI {_ci_text(r['effect_ci'])}, {test['name']}: {p_text}"),
                  ("unit of replication", f"the animal (n = {r['n_animals']}); trials are resampled within animals "
                                          "for the CI only"),
                  ("controls", "; ".join(f"{_SOURCE_NAMES.get(k, k)}: {v['effect']:+.3f}"
                                          f"{'' if v['same_sign_as_primary'] else ' (opposite sign)'}"
                                          for k, v in r["controls"].items()) or "none")]
        ens = head.get("ensemble") or {}
        if ens.get("member_sd") is not None:
            facts.append(("classifier ensemble", f"{ens['members']} members; member effects "
                          f"{min(ens['member_effects']):+.3f} to {max(ens['member_effects']):+.3f} (SD "
                          f"{ens['member_sd']:.3f}; SD of the ensemble mean ~{ens['ensemble_sd']:.3f}); "
                          f"{ens['members_agreeing_in_sign']} of {ens['members']} agree in sign"))
        for inter in (head.get("groups") or {}).get("interactions", []):
            g0, g1 = inter["groups"]
            facts.append((f"group x condition ({g1} vs {g0})", f"{inter['interaction']:+.3f}, "
                          + (f"p = {inter['p']:.4f}" if inter["p"] is not None else inter.get("message", "no test"))))
        facts += [("warning", w) for w in r.get("warnings", [])]
        for name, src in r["sources"].items():
            t = src["test"]
            rows.append([f"{a} vs {b}", _SOURCE_NAMES.get(name, name), fmt(src["n_animals"]),
                         fmt(src["conditions"][a]["statistic"]), fmt(src["conditions"][b]["statistic"]),
                         f"{src['effect']:+.3f}", _ci_text(src["effect_ci"]),
                         fmt(t["p"], 4) if t["p"] is not None else "too few animals",
                         " / ".join(f"{src['effect_by_set'][k]:+.3f}" for k in ("singles", "pairs"))])
            for x in src["animals"]:
                animal_rows.append([f"{a} vs {b}", _SOURCE_NAMES.get(name, name), x["animal"], x.get("group") or "–",
                                    fmt(x["n_patterns"]), fmt(x[a]), fmt(x[b]), f"{x['effect']:+.3f}",
                                    fmt(x.get("session_difference_p"), 3)])
        seed = {c: (r.get("conditions") or {}).get(c, {}).get("seed_study_sum") for c in (a, b)}
        if all(seed.values()):
            facts.append(("seed study's statistic (summed off-diagonal ZNCC, all pattern pairs; not the headline "
                          "test)", "; ".join(f"{c} {fmt(v['mean'])} (mean over animals; "
                                             + ", ".join(f"{an} {fmt(x)}" for an, x in v["per_animal"].items()) + ")"
                                             for c, v in seed.items())))
        acc = r.get("classifier_accuracy") or {}
        if any(acc.values()):
            facts.append(("classifier accuracy (not evidence about connectivity)",
                          "; ".join(f"{c} {_accuracy_text(v['accuracy'], v.get('ci'))}" for c, v in acc.items() if v)
                          + ". " + r.get("classifier_accuracy_note", "")))
        fig = figure_from_png(f.with_suffix(".png"), f"{a} vs {b}",
                              "Top: the per-animal effect of every source with its mean and hierarchical-bootstrap "
                              "CI. Below: the primary source's ZNCC matrices of the first animals.", wide=True)
        if fig is not None:
            figures.append(fig)
    return {"facts": facts,
            "tables": [Table(columns=["comparison", "maps", "animals", "statistic (a)", "statistic (b)", "effect",
                                      "95% CI", "p (sign-flip over animals)", "effect singles / pairs"], rows=rows),
                       Table(columns=["comparison", "maps", "animal", "group", "patterns", "a", "b", "effect",
                                      "session-difference p (diagnostic, trials)"], rows=animal_rows,
                             title="Per animal", collapsed=True)],
            "figures": figures}
