"""The package's structure, measured by ``scripts/architecture.py``: the scanner on a made-up package,
then the figures docs/architecture.md states for the real one."""

import importlib.util
import pathlib
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
architecture = importlib.util.module_from_spec(_spec)
sys.modules["architecture"] = architecture  # dataclasses look their module up
_spec.loader.exec_module(architecture)


def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in {"cpt_jax/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_an_import_inside_a_function_closes_a_cycle(tmp_path):
    root = _package(tmp_path, {
        "cpt_jax/config.py": """
            def validate():
                from cpt_jax.train import loop
                return loop
        """,
        "cpt_jax/train/__init__.py": "",
        "cpt_jax/train/loop.py": "from cpt_jax import config\n",
        "cpt_jax/storage.py": "import cpt_jax.errors\n",
        "cpt_jax/errors.py": "",
    })
    modules = architecture.scan(root)
    assert architecture.cycles(modules) == [["cpt_jax.config", "cpt_jax.train.loop"]]
    # config is on the ground floor and loop on the training floor: one upward arrow
    assert architecture.upward_arrows(modules) == [("cpt_jax.config", "cpt_jax.train.loop")]
    assert modules["cpt_jax.storage"].imports == {"cpt_jax.errors"}


def test_private_names_and_long_functions_are_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    root = _package(tmp_path, {
        "cpt_jax/errors.py": "def _hidden():\n    pass\n",
        "cpt_jax/checks.py": "from cpt_jax.errors import _hidden\nfrom cpt_jax import errors\n"
                             "y = errors._hidden\n",
        "cpt_jax/config.py": f"def defaults():\n{body}\n",
    })
    modules = architecture.scan(root)
    assert modules["cpt_jax.checks"].private_names == ["cpt_jax.errors._hidden"] * 2
    assert modules["cpt_jax.config"].long_functions == [("defaults", 86)]
    assert architecture.cycles(modules) == []


def test_every_module_is_on_a_floor():
    for name in architecture.scan():
        architecture.floor_of(name)
    with pytest.raises(KeyError, match="no floor"):
        architecture.floor_of("numpy.linalg")


def test_the_house_figures_hold():
    """What docs/architecture.md promises: no cycle, at most one upward arrow, no private name
    reached across modules, no function over 80 lines."""
    modules = architecture.scan()
    assert architecture.cycles(modules) == []
    assert len(architecture.upward_arrows(modules)) <= 1, architecture.upward_arrows(modules)
    assert [n for m in modules.values() for n in m.private_names] == []
    assert [(m.name, f) for m in modules.values() for f, _ in m.long_functions] == []
