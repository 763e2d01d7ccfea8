"""Per-rule conda envs (``--sdm conda``): every env parses, every rule names one, each env provides
every third-party module its rules import (through calflow, followed with ast), its versions agree
with pyproject.toml, and CaImAn appears only in envs/caiman.yaml (it is not on PyPI)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"
RULES = ROOT / "workflow" / "rules"
SRC = ROOT / "src"

# import name -> conda-forge package name (when they differ); a tuple lists acceptable alternatives
CONDA_NAME = {
    "torch": "pytorch",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "matplotlib": ("matplotlib-base", "matplotlib"),
    "PIL": "pillow",
    "cv2": "opencv",
    "google_crc32c": "google-crc32c",
    "oasis": "oasis-deconv",
}
# conda package name -> PyPI name in pyproject.toml (when they differ)
PYPI_NAME = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
CONDA_ONLY = {"python", "pip", "caiman"}  # not PyPI dependencies of calflow
_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


def env_packages(path: Path) -> dict[str, SpecifierSet]:
    """conda package -> version specifier of an env file (conda-forge match specs like 'zarr>=3.0,<4')."""
    env = yaml.safe_load(path.read_text())
    packages = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"{path.name}: unsupported dependency entry {dep!r} (pip: sections are not used)"
        m = _SPEC.match(dep.strip())
        assert m, f"{path.name}: cannot parse {dep!r}"
        packages[m[1].lower()] = SpecifierSet(m[2].replace(" ", ""))
    return packages


def rules() -> dict[str, dict]:
    """rule -> {file, conda, script, runs} parsed from workflow/rules/*.smk (snakefmt layout; a rule
    may sit inside an ``if`` block, e.g. evaluate_truth)."""
    found = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        heads = list(re.finditer(r"^[ \t]*(?:rule|checkpoint) (\w+):", text, re.M))
        for i, h in enumerate(heads):
            body = text[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            body = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next top-level statement
            conda = re.search(r"^\s+conda:\s*\n\s+[\"']([^\"']+)[\"']", body, re.M)
            script = re.search(r"^\s+script:\s*\n\s+[\"']([^\"']+)[\"']", body, re.M)
            found[h[1]] = {
                "file": smk,
                "conda": (smk.parent / conda[1]).resolve() if conda else None,
                "script": (smk.parent / script[1]).resolve() if script else None,
                "runs": bool(re.search(r"^\s+(script|shell|run|wrapper|notebook):", body, re.M)),
            }
    return found


def _optional(node: ast.AST, parents: dict) -> bool:
    """Inside ``try: ... except ImportError`` (an optional import)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
    return False


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def third_party_imports(script: Path) -> dict[str, str]:
    """Top-level third-party modules imported by a script and, transitively, the calflow modules it
    uses (package __init__ files included): module -> first file that imports it."""
    found: dict[str, str] = {}
    seen: set[Path] = set()
    todo = [(script, None)]
    while todo:
        path, module = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = (module if path.name == "__init__.py" else module.rpartition(".")[0]) if module else ""
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import inside calflow
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module or ""
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            if _optional(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "calflow":
                    parts = name.split(".")
                    for k in range(1, len(parts) + 1):  # the package inits run too
                        f = _module_file(".".join(parts[:k]))
                        if f:
                            todo.append((f, ".".join(parts[:k])))
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_env_file_parses_and_pins_python():
    assert env_files(), "no envs/*.yaml"
    for path in env_files():
        env = yaml.safe_load(path.read_text())
        assert set(env) >= {"name", "channels", "dependencies"}, path.name
        assert env["channels"][0] == "conda-forge", path.name
        packages = env_packages(path)
        assert "python" in packages and packages["python"].contains("3.11"), \
            f"{path.name}: needs python>=3.11 (Snakemake 9 runs script: jobs with it)"


def test_every_rule_that_runs_something_names_an_existing_env():
    found = rules()
    assert {"simulate_demo", "ingest", "motion", "summary"} <= set(found)
    for name, r in found.items():
        if not r["runs"]:
            continue
        assert r["conda"] is not None, f"rule {name} ({r['file'].name}) has no conda: directive"
        assert r["conda"].parent == ENVS and r["conda"].exists(), f"rule {name}: {r['conda']} is not in envs/"


@pytest.mark.parametrize("rule", sorted(n for n, r in rules().items() if r["script"]))
def test_env_provides_every_module_the_rule_imports(rule):
    r = rules()[rule]
    if r["conda"] is None:
        pytest.fail(f"rule {rule} has no conda: directive")
    packages = env_packages(r["conda"])
    missing = []
    for module, where in sorted(third_party_imports(r["script"]).items()):
        wanted = CONDA_NAME.get(module, module.lower())
        wanted = wanted if isinstance(wanted, tuple) else (wanted,)
        if not any(w in packages for w in wanted):
            missing.append(f"{module} (conda: {wanted[0]}; imported in {where})")
    assert not missing, f"rule {rule}: {r['conda'].name} lacks {', '.join(missing)}"


def test_import_scan_follows_calflow_and_skips_optional_imports():
    """The scan above is not vacuous: motion's script reaches torch through calflow.motion.stage,
    matplotlib through calflow.motion.plots; runner.py's optional torch import is not counted."""
    found = third_party_imports(ROOT / "workflow" / "scripts" / "motion.py")
    assert {"torch", "zarr", "numpy", "matplotlib", "xarray"} <= set(found)
    assert found["torch"] == "src/calflow/motion/stage.py" and found["matplotlib"] == "src/calflow/figures.py"
    ingest = third_party_imports(ROOT / "workflow" / "scripts" / "ingest.py")
    assert {"tifffile", "h5py", "pynwb", "zarr"} <= set(ingest) and "torch" not in ingest


def _bounds(spec: SpecifierSet) -> tuple[Version | None, Version | None]:
    lo = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    hi = [Version(s.version) for s in spec if s.operator == "<"]
    return (max(lo) if lo else None), (min(hi) if hi else None)


def test_env_versions_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the rules' envs may also hold the workflow extra (what a Snakemake run installs, e.g. nwbinspector)
    deps = {Requirement(d).name.lower(): Requirement(d).specifier
            for d in [*project["dependencies"], *project["optional-dependencies"]["workflow"]]}
    problems = []
    for path in env_files():
        for pkg, spec in env_packages(path).items():
            if pkg in CONDA_ONLY:
                continue
            pypi = PYPI_NAME.get(pkg, pkg)
            if pypi not in deps:
                problems.append(f"{path.name}: {pkg} is not a dependency (or workflow extra) in pyproject.toml")
                continue
            (lo, hi), (plo, phi) = _bounds(spec), _bounds(deps[pypi])
            if plo and (lo is None or lo < plo):
                problems.append(f"{path.name}: {pkg} lower bound {lo} is below pyproject's {pypi}>={plo}")
            if phi and (hi is None or hi > phi):
                problems.append(f"{path.name}: {pkg} must stay below {phi} as in pyproject ({spec or 'unbounded'})")
    assert not problems, "\n".join(problems)


def test_caiman_only_in_its_own_env():
    """CaImAn is conda-only (the PyPI 'caiman' is an unrelated package): only envs/caiman.yaml may
    name it, and pyproject.toml must not."""
    for path in env_files():
        if path.name != "caiman.yaml":
            assert "caiman" not in env_packages(path), f"{path.name} lists caiman"
            assert "caiman" not in path.read_text().lower(), f"{path.name} mentions caiman"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    all_deps = [*project["dependencies"], *sum(project.get("optional-dependencies", {}).values(), [])]
    assert not any(Requirement(d).name.lower() == "caiman" for d in all_deps)
    caiman_env = ENVS / "caiman.yaml"
    if caiman_env.exists():
        assert "caiman" in env_packages(caiman_env)
        assert "conda-forge" in yaml.safe_load(caiman_env.read_text())["channels"]
