"""The tree is the data flow: each package imports only the packages below it (the README's Layout)."""

import ast
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module_from_the_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform, ray; print(platform.__file__); print(platform.system())"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert Path(out[0]).parent == Path(sysconfig.get_paths()["stdlib"])
    assert out[1] == "Linux"


def test_source_folder_is_not_a_package():
    assert (ROOT / "platform" / "tickray" / "__init__.py").exists()
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_top_level_layout_matches_the_design():
    for name in ("pyproject.toml", "README.md", "cluster.yaml", "platform", "jobs", "serve", "tests", "infra",
                 "benchmarks", ".ci/run", "Makefile"):
        assert (ROOT / name).exists(), name


def test_every_verb_has_help():
    from tickray.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"up", "down", "status", "generate", "ingest", "features", "train", "demo"} <= set(verbs)
    for verb in verbs:
        out = subprocess.run([sys.executable, "-m", "tickray.cli", verb, "--help"],
                             check=False, capture_output=True, text=True)
        assert out.returncode == 0 and f"usage: tickray {verb}" in out.stdout, verb


PACKAGE = ROOT / "platform" / "tickray"


# What each part of tickray may import, written here from the README's Layout (not read from the code).
BASE = {"errors", "config"}
MAY_IMPORT = {
    "errors": set(),
    "config": {"errors"},
    "market": BASE,
    "lake": BASE,
    "ops": BASE,
    "sources": BASE | {"market", "lake"},
    "ingest": BASE | {"sources", "lake", "ops"},
    "features": BASE | {"lake", "ops"},
    "bars": BASE | {"features", "lake", "market", "ops"},
    "stream": BASE | {"bars", "features", "lake", "market", "sources", "ops"},
    "sim": BASE | {"bars", "market", "sources", "lake"},
    "research": BASE | {"bars", "features", "lake", "ops"},
    "training": BASE | {"research", "features", "lake", "ops", "stream"},
    "backtest": BASE | {"training", "research", "bars", "features", "lake", "ops"},
    "serving": BASE | {"training", "stream", "features", "ops"},
}
TOP = {"__init__", "config", "demo", "errors"}  # the only modules outside a package
ENTRY = {"cli", "demo"}  # the command line (a package, one module per verb group) and the demo: they use all
STAND_INS = "sim"  # local venues and markets: for tests, benchmarks, the demo and `tickray replay` only


def _part(module: str) -> str | None:
    parts = module.split(".")
    return (parts[1] if len(parts) > 1 else "__init__") if parts[0] == "tickray" else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tickray import lake` names the part in the imported names
            found |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "tickray" else {node.module}
    return found


def test_every_package_imports_only_what_lies_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        if part in ENTRY or part == "__init__":
            continue
        assert part in MAY_IMPORT, f"{rel}: a part the layout does not know"
        for module in _imports(path):
            used = _part(module)
            if used and used != part and used not in MAY_IMPORT[part]:
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_the_top_holds_only_the_entry_points_and_the_base():
    loose = {p.stem for p in PACKAGE.glob("*.py")} - TOP
    assert not loose, f"modules loose at the top of tickray: {sorted(loose)}"


def test_no_product_module_imports_the_stand_ins():
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in {STAND_INS, *ENTRY}
             and any(_part(m) == STAND_INS for m in _imports(p))]
    assert not users, f"the real code depends on the stand-in venues: {users}"


def test_the_readme_layout_names_every_package_and_its_imports():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)/` \| [^|]+\|([^|]*)\|$", section, re.MULTILINE))
    assert set(rows) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} - ENTRY, sorted(rows)
    for part, listed in rows.items():
        named = set(re.findall(r"`(\w+)`", listed))
        assert named == MAY_IMPORT[part] - BASE, (part, named)
