"""The condition comparison: animals as the unit, exact sign-flip test, hierarchical bootstrap,
pattern-pair sets, controls, and the model-free stimulus-triggered maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from calflow import compare as cmp
from calflow.errors import CalflowInputError
from calflow.io import MovieWriter, write_array
from calflow.stim_maps import read_stim_maps, session_stim_maps, trial_weights

HW = 10
NAMES = ["1", "2", "3", "4", "5", "1+2", "3+4"]


def _store(path, session, condition, animal, maps, pats, names=NAMES, members=None, method="gradcam"):
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs.update({"session": session, "condition": condition, "group": animal, "patterns": names,
                    "zncc_map": "signed", "method": method, "members": 1 if members is None else len(members)})
    write_array(path, "trial_maps", maps.astype(np.float32), ("trial", "ly", "lx"))
    write_array(path, "trial_pattern", np.asarray(pats, np.int64), ("trial",))
    write_array(path, "trial_fold", (np.arange(len(pats)) % 2).astype(np.int64), ("trial",))
    if members is not None:
        write_array(path, "member_trial_maps", members.astype(np.float32), ("member", "trial", "ly", "lx"))
    return str(path)


def _blobs(rng, n):
    yy, xx = np.mgrid[:HW, :HW]
    return [np.exp(-((yy - rng.uniform(1, HW - 1)) ** 2 + (xx - rng.uniform(1, HW - 1)) ** 2) / 3) for _ in range(n)]


def _session_maps(rng, own, shared_amp, session_amp, n_per, noise=0.5):
    """Trial maps: each pattern its own blob(s) + ``shared_amp`` x an animal-wide blob (the
    connectivity knob) + ``session_amp`` x a map of this session alone (a session nuisance)."""
    common = _blobs(rng, 1)[0]
    session_map = rng.uniform(0, 2) * rng.normal(size=(HW, HW))  # its strength varies between sessions too
    maps, pats = [], []
    for k, name in enumerate(NAMES):
        base = sum(own[int(t) - 1] for t in name.split("+"))
        for _ in range(n_per):
            maps.append(base + shared_amp * common + session_amp * session_map + noise * rng.normal(size=(HW, HW)))
            pats.append(k)
    return np.stack(maps), np.array(pats)


def _experiment(tmp, seed, n_animals, shared=(0.3, 0.3), session_amp=0.25, n_per=6, groups=None):
    stores = []
    for an in range(n_animals):
        rng = np.random.default_rng([seed, an])
        own = _blobs(rng, 5)
        for cond, amp in zip(("A", "B"), shared[an] if groups else shared, strict=True):
            maps, pats = _session_maps(rng, own, amp, session_amp, n_per)
            stores.append(_store(tmp / f"{seed}_{an}_{cond}.zarr", f"m{an}_{cond}", cond, f"m{an}", maps, pats))
    return stores


FAST = {"n_bootstrap": 0, "diagnostic_permutations": 0}


def test_sign_flip_test_is_exact_and_knows_its_smallest_p():
    t = cmp.sign_flip_test([0.1, 0.2, 0.3, 0.1, 0.2, 0.4])
    assert t["exact"] and t["n_sign_patterns"] == 64
    assert t["p"] == pytest.approx(2 / 64) and t["smallest_possible_p"] == pytest.approx(2 / 64)
    t = cmp.sign_flip_test([0.1, -0.1, 0.2, -0.2])
    assert t["p"] == 1.0
    t = cmp.sign_flip_test(np.linspace(0.1, 1, 20), n_permutations=2000)
    assert not t["exact"] and t["p"] < 0.001


def test_pair_sets_keep_pairs_that_share_a_target_out():
    sets = cmp.pair_sets(["1", "2", "1+2", "3+4", "2+3"])
    as_names = {k: {(int(i), int(j)) for i, j in zip(*v, strict=True)} for k, v in sets.items()}
    assert as_names["singles"] == {(0, 1)}
    assert as_names["pairs"] == {(2, 3)}  # 1+2 and 3+4; 2+3 shares a target with both
    assert (0, 2) not in as_names["disjoint"] and (0, 3) in as_names["disjoint"] and (1, 3) in as_names["disjoint"]
    assert len(as_names["all"]) == 10


def test_animal_level_test_holds_its_level_where_the_trial_level_one_does_not(tmp_path):
    """A true null with a session-specific map component (same distribution in both conditions):
    the trial-level permutation calls most recordings different; the sign-flip over animals keeps
    its level."""
    p_animal, p_trial = [], []
    for seed in range(40):
        stores = _experiment(tmp_path, seed, n_animals=6)
        res = cmp.compare_conditions({"gradcam": stores}, "A", "B", {**FAST, "diagnostic_permutations": 50})
        p_animal.append(res["p"])
        p_trial += [x["session_difference_p"] for x in res["sources"]["gradcam"]["animals"]]
    fpr_animal = np.mean(np.array(p_animal) < 0.05)
    fpr_trial = np.mean(np.array(p_trial) < 0.05)
    assert fpr_animal <= 0.125, p_animal  # 40 nulls at alpha 0.05: 5 or more rejections has p < 0.05
    assert fpr_trial >= 0.4, fpr_trial


def test_a_strengthened_shared_component_is_detected_in_every_animal(tmp_path):
    stores = _experiment(tmp_path, 1, n_animals=6, shared=(0.2, 1.2), session_amp=0.1)
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", {"n_bootstrap": 200, "diagnostic_permutations": 0})
    assert res["unit"] == "animal" and res["n_animals"] == 6
    assert res["p"] == pytest.approx(2 / 64) and res["test"]["exact"]
    assert all(x["effect"] > 0 for x in res["sources"]["gradcam"]["animals"])
    lo, hi = res["effect_ci"]
    assert 0 < lo <= res["effect"] <= hi
    a, b = (res["sources"]["gradcam"]["conditions"][c] for c in "AB")
    assert a["statistic_ci"][0] <= a["statistic"] <= a["statistic_ci"][1]
    assert b["statistic"] > a["statistic"]
    assert set(res["sources"]["gradcam"]["effect_by_set"]) == set(cmp.SETS)
    out = tmp_path / "c" / "A_vs_B.json"
    cmp.write_comparison(res, out, tmp_path / "c" / "A_vs_B.png")
    saved = json.loads(out.read_text())
    assert saved["p"] == res["p"] and (tmp_path / "c" / "A_vs_B.png").stat().st_size > 1000
    assert "_matrices" not in saved["sources"]["gradcam"]


def test_too_few_animals_gives_the_effect_without_a_p_value(tmp_path, caplog):
    stores = _experiment(tmp_path, 2, n_animals=4, shared=(0.2, 1.2))
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", FAST)
    assert res["p"] is None and not res["test"]["testable"]
    assert "too few animals for a test" in res["test"]["message"] and "2/2^4" in res["test"]["message"]
    assert any("too few animals" in w for w in res["warnings"]) and "too few animals" in caplog.text
    assert res["effect"] > 0


def test_subtracting_the_mean_map_removes_a_component_shared_by_every_pattern(tmp_path):
    stores = _experiment(tmp_path, 3, n_animals=6, shared=(0.0, 1.5), session_amp=0.0)
    plain = cmp.compare_conditions({"gradcam": stores}, "A", "B", FAST)
    sub = cmp.compare_conditions({"gradcam": stores}, "A", "B", {**FAST, "subtract_mean": True})
    assert plain["effect"] > 0.2
    assert abs(sub["effect"]) < 0.5 * plain["effect"]


def test_group_by_condition_interaction_is_permuted_over_animals(tmp_path):
    n = 8
    shared = [(0.3, 0.3)] * 4 + [(0.3, 1.3)] * 4
    stores = _experiment(tmp_path, 4, n_animals=n, shared=shared, session_amp=0.1, groups=True)
    groups = {f"m{i}": ("vehicle" if i < 4 else "CFA") for i in range(n)}
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", FAST, animal_groups=groups)
    g = res["sources"]["gradcam"]["groups"]
    assert g["per_group"]["CFA"]["effect"] > g["per_group"]["vehicle"]["effect"]
    (inter,) = g["interactions"]
    assert inter["groups"] == ["vehicle", "CFA"] and inter["interaction"] > 0
    assert inter["exact"] and inter["smallest_possible_p"] == pytest.approx(2 / 70)
    assert inter["p"] == pytest.approx(2 / 70)
    # 4 animals per group cannot reach 0.05 in a sign-flip test of their own
    assert g["per_group"]["CFA"]["p"] is None


def test_controls_are_reported_and_a_sign_disagreement_is_flagged(tmp_path):
    up = _experiment(tmp_path / "up", 5, n_animals=6, shared=(0.2, 1.2), session_amp=0.1)
    down = _experiment(tmp_path / "down", 6, n_animals=6, shared=(1.2, 0.2), session_amp=0.1)
    res = cmp.compare_conditions({"gradcam": up, "stim_maps": down}, "A", "B", FAST)
    assert res["primary"] == "gradcam" and res["effect"] > 0
    ctl = res["controls"]["stim_maps"]
    assert ctl["effect"] < 0 and not ctl["same_sign_as_primary"]
    assert any("opposite sign" in w for w in res["warnings"])
    same = cmp.compare_conditions({"gradcam": up, "stim_maps": up}, "A", "B", FAST)
    assert not any("opposite sign" in w for w in same["warnings"])


def test_sources_analysed_in_parallel_give_the_same_result(tmp_path):
    """compare's sources in two processes (the rule's threads) give exactly the serial result."""
    up = _experiment(tmp_path / "up", 5, n_animals=6, shared=(0.2, 1.2), session_amp=0.1)
    down = _experiment(tmp_path / "down", 6, n_animals=6, shared=(1.2, 0.2), session_amp=0.1)
    sources = {"gradcam": up, "stim_maps": down, "gradcam_shuffled": up[::-1]}
    serial = cmp.compare_conditions(sources, "A", "B", FAST)
    parallel = cmp.compare_conditions(sources, "A", "B", FAST, workers=2)
    assert list(parallel["sources"]) == list(serial["sources"]) == list(sources)
    for name in sources:
        a, b = serial["sources"][name], parallel["sources"][name]
        assert a["effect"] == b["effect"] and a["effect_ci"] == b["effect_ci"] and a["test"] == b["test"]
    assert parallel["warnings"] == serial["warnings"]


def test_ensemble_members_give_the_seed_spread(tmp_path):
    stores = []
    for an in range(6):
        rng = np.random.default_rng([9, an])
        own = _blobs(rng, 5)
        for cond, amp in (("A", 0.2), ("B", 1.0)):
            maps, pats = _session_maps(rng, own, amp, 0.1, 4)
            members = np.stack([maps + 0.3 * rng.normal(size=maps.shape) for _ in range(5)])
            stores.append(_store(tmp_path / f"{an}{cond}.zarr", f"m{an}_{cond}", cond, f"m{an}",
                                 members.mean(axis=0), pats, members=members))
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", FAST)
    ens = res["sources"]["gradcam"]["ensemble"]
    assert ens["members"] == 5 and len(ens["member_effects"]) == 5
    assert ens["ensemble_sd"] == pytest.approx(ens["member_sd"] / np.sqrt(5))
    assert all(e > 0 for e in ens["member_effects"]) and ens["members_agreeing_in_sign"] == 5


def test_no_animal_with_both_conditions_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    maps, pats = _session_maps(rng, _blobs(rng, 5), 0.3, 0.0, 2)
    only_a = [_store(tmp_path / "a.zarr", "m0_A", "A", "m0", maps, pats)]
    with pytest.raises(CalflowInputError, match="no animal has held-out trials of both A and B"):
        cmp.compare_conditions({"gradcam": only_a}, "A", "B", FAST)
    with pytest.raises(CalflowInputError, match="compare.statistic"):
        cmp.CompareParams.from_config({"statistic": "best"})


def test_stim_maps_are_the_response_minus_the_baseline(tmp_path):
    T, H, W = 120, 16, 16
    movie = np.full((T, H, W), 100.0, np.float32)
    rows = ["frame,targets"]
    for start, tg, (y, x) in ((20, "1", (2, 2)), (60, "2", (12, 12)), (90, "1", (2, 2))):
        movie[start : start + 8, y : y + 2, x : x + 2] += 40  # the stimulated cell responds
        rows += [f"{t},{tg}" for t in range(start, start + 5)]
    store = tmp_path / "motion.zarr"
    with MovieWriter(store, movie.shape, movie.dtype, fps=30.0, chunk_frames=50) as w:
        w.write(movie)
    (tmp_path / "stim.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "targets.csv").write_text("id,y,x\n1,2,2\n2,12,12\n")
    entry = {"session": "m0_A", "condition": "A", "motion": str(store), "stim_log": str(tmp_path / "stim.csv"),
             "targets": str(tmp_path / "targets.csv")}
    out = tmp_path / "stim_maps.zarr"
    info = session_stim_maps(entry, {"downsample": 2, "baseline_frames": 5, "tail_frames": 3, "block_frames": 32},
                             out, animal="m0")
    assert info == {"trials": 3, "patterns": 2}
    g = zarr.open_group(out, mode="r")
    assert g.attrs["group"] == "m0" and g.attrs["patterns"] == ["1", "2"]
    maps = np.asarray(g["trial_maps"][:])
    assert maps.shape == (3, 8, 8)
    # response window: 5 stimulated + 3 tail frames = the 8 frames of the transient -> +40 in the cell's pixel
    assert maps[0, 1, 1] == pytest.approx(40.0) and maps[1, 6, 6] == pytest.approx(40.0)
    assert np.abs(maps[0][np.arange(8) != 1]).max() == 0 and maps[0, 6, 6] == 0
    back = read_stim_maps(out)  # the typed reader gives what the store holds
    assert back.patterns == ["1", "2"] and back.session == "m0_A" and back.pattern_trials.tolist() == [2, 1]
    np.testing.assert_array_equal(back.trial_maps, maps)
    w = trial_weights(np.array([2]), np.array([4]), 10, 5, 0).toarray()
    assert w[0, :2].sum() == pytest.approx(-1) and w[0, 2:4].sum() == pytest.approx(1)


def test_seed_study_sum_is_reported_per_condition_whatever_the_headline(tmp_path):
    stores = _experiment(tmp_path, 7, n_animals=6, shared=(0.2, 1.2), session_amp=0.1)
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", FAST)  # headline: mean over disjoint pairs
    seed = cmp.compare_conditions({"gradcam": stores}, "A", "B", {**FAST, "statistic": "all", "summary": "sum"},
                                  profile="seed000")
    assert res["profile"] == "default" and seed["profile"] == "seed000"
    for c in "AB":
        s = res["conditions"][c]["seed_study_sum"]
        assert "seed study" in s["label"] and "not the headline" in s["label"]
        assert s["n_animals"] == 6 and sorted(s["per_animal"]) == [f"m{i}" for i in range(6)]
        # the seed study's number is the headline statistic of the seed000 profile's comparison
        assert s["mean"] == pytest.approx(seed["sources"]["gradcam"]["conditions"][c]["statistic"])
        assert s["mean"] == pytest.approx(np.mean(list(s["per_animal"].values())))
        assert s["mean"] != pytest.approx(res["sources"]["gradcam"]["conditions"][c]["statistic"])
        per = {x["animal"]: x[c] for x in seed["sources"]["gradcam"]["animals"]}
        assert s["per_animal"] == pytest.approx(per)
    # 7 patterns = 21 pattern pairs, each ZNCC at most 1
    assert 0 < res["conditions"]["A"]["seed_study_sum"]["mean"] < res["conditions"]["B"]["seed_study_sum"]["mean"] <= 21


def _trials(rng, n, p_correct, frames=8):
    """Per trial (correct, stimulated frames): every frame of a trial right or every one wrong."""
    ok = rng.random(n) < p_correct
    return ok.astype(int) * frames, np.full(n, frames)


def test_accuracy_ci_resamples_trials_as_clusters_and_animals_as_units():
    rng = np.random.default_rng(0)
    session = _trials(rng, 20, 0.5)
    one = cmp.clustered_accuracy([[session]], n_bootstrap=2000, seed=1)
    assert one["n_units"] == 1 and one["n_trials"] == 20 and one["n_frames"] == 160
    lo, hi = one["ci"]
    # 20 all-or-none trials: about the binomial interval of 20, not of 160 independent frames (width ~0.15)
    assert lo <= one["accuracy"] <= hi and hi - lo > 0.3
    assert cmp.clustered_accuracy([[session]], n_bootstrap=2000, seed=1)["ci"] == one["ci"]  # seeded
    # two animals, 0.95 and 0.55, many trials each: the animals, not the trials, set the interval
    animals = [[_trials(rng, 200, 0.95)], [_trials(rng, 200, 0.55)]]
    nested = cmp.clustered_accuracy(animals, n_bootstrap=2000, seed=1)
    pooled = cmp.clustered_accuracy([[t for a in animals for t in a]], n_bootstrap=2000, seed=1)
    assert nested["accuracy"] == pytest.approx(pooled["accuracy"])
    assert (nested["ci"][1] - nested["ci"][0]) > 3 * (pooled["ci"][1] - pooled["ci"][0])
    assert nested["ci"][0] < 0.6 and nested["ci"][1] > 0.9
    assert cmp.clustered_accuracy(animals, n_bootstrap=0)["ci"] is None


def test_accuracy_by_condition_pools_animals_from_the_metrics_files(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for an, p_ok in (("m1", 0.9), ("m2", 0.6)):
        sessions = {}
        for cond in "AB":
            c, f = _trials(rng, 30, p_ok)
            sessions[f"{an}_{cond}"] = {"condition": cond, "test": {"accuracy": c.sum() / f.sum(),
                                                                    "n_stimulated_frames": int(f.sum())},
                                        "test_trials": {"correct": c.tolist(), "stimulated_frames": f.tolist()}}
        conditions = {cond: {"test_accuracy": sessions[f"{an}_{cond}"]["test"]["accuracy"],
                             "test_accuracy_ci": [0.1, 0.9], "n_trials": 30} for cond in "AB"}
        path = tmp_path / f"{an}.json"
        path.write_text(json.dumps({"group": an, "sessions": sessions, "conditions": conditions}))
        files.append(path)
    acc = cmp.accuracy_by_condition(files, n_bootstrap=500, seed=0)
    for cond in "AB":
        a = acc[cond]
        both = [json.loads(f.read_text())["sessions"][f"{an}_{cond}"]["test_trials"]
                for f, an in zip(files, ("m1", "m2"), strict=True)]
        expect = sum(sum(t["correct"]) for t in both) / sum(sum(t["stimulated_frames"]) for t in both)
        assert a["accuracy"] == pytest.approx(expect) and a["n_animals"] == 2 and a["n_trials"] == 60
        assert a["ci"][0] < a["accuracy"] < a["ci"][1] and "animals" in a["ci_method"]
        assert a["per_animal"]["m1"]["ci"] == [0.1, 0.9]
    # metrics from before the per-trial counts: the pooled accuracy, no CI
    old = json.loads(files[0].read_text())
    for s in old["sessions"].values():
        del s["test_trials"]
    files[0].write_text(json.dumps(old))
    assert cmp.accuracy_by_condition(files)["A"]["ci"] is None


def test_downsampled_frames_too_small_name_the_config_key():
    from calflow.errors import CalflowInputError
    from calflow.io import downsampled_hw

    assert downsampled_hw((10, 64, 48), 2, 4, "classify.downsample", "m.zarr") == (32, 24)
    with pytest.raises(CalflowInputError, match=r"m\.zarr.*too small for stim_maps\.downsample = 8"):
        downsampled_hw((10, 12, 64), 8, 2, "stim_maps.downsample", "m.zarr")


@pytest.mark.parametrize("how, subtract_mean, summary", [("signed", False, "mean"), ("relu", True, "sum")])
def test_batched_inner_bootstrap_equals_one_replicate_at_a_time(how, subtract_mean, summary):
    """The inner bootstrap's batched pattern maps and ZNCC matrices give what a loop of
    :func:`animal_stats` calls over the same draws gives (replicate by replicate, cell by cell),
    including a flat map (NaN entries left out of the summary)."""
    rng = np.random.default_rng(3)
    names = ["1", "2", "3", "1+2", "3+4"]
    pats_a, pats_b = [n for n in names for _ in range(4)], [n for n in names[:4] for _ in range(3)]
    maps_a, maps_b = rng.normal(size=(len(pats_a), 6, 5)), rng.normal(size=(len(pats_b), 6, 5))
    maps_b[[i for i, n in enumerate(pats_b) if n == "2"]] = 1.0  # pattern 2 flat in condition b
    sa = cmp.Stratum(maps_a, pats_a, np.zeros(len(pats_a), np.int64), ["s_a"])
    sb = cmp.Stratum(maps_b, pats_b, np.zeros(len(pats_b), np.int64), ["s_b"])
    ap = cmp.pair_animal("m", sa, sb)
    p = cmp.CompareParams.from_config({"n_bootstrap": 37, "subtract_mean": subtract_mean, "summary": summary})
    got = cmp._inner_bootstrap(ap, p, how, np.random.default_rng(11))
    ref_rng = np.random.default_rng(11)

    def one_replicate(sel):  # per condition: pattern means of the drawn trials -> ZNCC matrix -> set summaries
        out = np.empty((2, len(cmp.SETS)))
        for c in (0, 1):
            ii = sel[ap.cond[sel] == c]
            z = cmp.condition_matrix(ap.maps[ii], ap.pat[ii], len(ap.patterns), how, subtract_mean)
            for k, name in enumerate(cmp.SETS):
                v = z[ap.sets[name]]
                v = v[np.isfinite(v)]
                out[c, k] = (v.sum() if summary == "sum" else v.mean()) if v.size else np.nan
        return out

    ref = np.stack([one_replicate(np.concatenate([c[ref_rng.integers(0, len(c), len(c))] for c in ap.cells]))
                    for _ in range(37)])
    assert got.shape == (37, 2, len(cmp.SETS)) and np.isnan(got).any() == np.isnan(ref).any()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert not np.allclose(got[0], got[1])  # the replicates differ
