import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module_from_the_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform, ray; print(platform.__file__); print(platform.system())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert Path(out[0]).parent == Path(sysconfig.get_paths()["stdlib"])
    assert out[1] == "Linux"


def test_source_folder_is_not_a_package():
    assert (REPO / "platform" / "tickray" / "__init__.py").exists()
    assert not (REPO / "platform" / "__init__.py").exists()


def test_top_level_layout_matches_the_design():
    for name in ("pyproject.toml", "README.md", "cluster.yaml", "platform", "jobs", "serve", "tests", "infra",
                 "benchmarks", ".ci/run", "Makefile"):
        assert (REPO / name).exists(), name


def test_every_verb_has_help():
    from tickray.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"up", "down", "status", "generate", "ingest", "features", "train", "demo"} <= set(verbs)
    for verb in verbs:
        out = subprocess.run([sys.executable, "-m", "tickray.cli", verb, "--help"],
                             check=False, capture_output=True, text=True)
        assert out.returncode == 0 and f"usage: tickray {verb}" in out.stdout, verb

