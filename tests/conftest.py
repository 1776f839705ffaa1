"""Shared fixtures: a throwaway project driven by the file-writing test plugin in enginekit.py."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

RECIPE = textwrap.dedent(
    """\
    # Build: doit recipe:demo
    goal: reverse lines
    base: {family: fake, model: fake-1}
    breadth: {sources: [{kind: lines, options: {rows: 20}}]}
    data: {sources: [{kind: lines, path: demo/lines.txt}]}
    train: {method: sft-lora}
    evals: {primary: fake-primary, regression: [fake-breadth]}
    criteria: {primary_min: 0.8}
    """
)


class Project:
    def __init__(self, root: Path):
        self.root = root

    def env(self, **extra):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["FACTORY_LOAD_PLUGINS"] = "enginekit"
        env.pop("FACTORY_ROOT", None)
        env.pop("FACTORY_INVOCATION", None)
        env.update(extra)
        return env

    def doit(self, *args, check=True, **env):
        r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root, env=self.env(**env),
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def factory(self, *args, **env):
        return subprocess.run([sys.executable, "-m", "factory.cli", *args], cwd=self.root, env=self.env(**env),
                              capture_output=True, text=True, timeout=120)

    def builds(self) -> list[str]:
        p = self.root / "builds.log"
        return [line.split()[0] for line in p.read_text().splitlines()] if p.exists() else []

    def reset_builds(self):
        (self.root / "builds.log").unlink(missing_ok=True)

    def runs(self) -> list[Path]:
        d = self.root / "runs"
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.exists() else []

    def set_recipe(self, text: str, name: str = "demo"):
        (self.root / "recipes" / f"{name}.yaml").write_text(text)


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    (root / "recipes" / "demo").mkdir(parents=True)
    (root / "recipes" / "demo.yaml").write_text(RECIPE)
    (root / "recipes" / "demo" / "lines.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    return Project(root)


@pytest.fixture(scope="session")
def clean_project(tmp_path_factory):
    """A project with the repo's recipes and no store: the slow end-to-end tests build into it, once per session."""
    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    return root


@pytest.fixture(scope="session")
def built_project(clean_project):
    """clean_project with the quick recipe and the flagship built (no-ops if the end-to-end tests built them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_LOAD_PLUGINS", "FACTORY_ROOT",
                                                         "FACTORY_INVOCATION")}
    for recipe in ("pace-planner-quick", "pace-planner"):
        r = subprocess.run([sys.executable, "-m", "doit", f"recipe:{recipe}"], cwd=clean_project, env=env,
                           capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return clean_project
