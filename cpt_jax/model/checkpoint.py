"""Params-only checkpoints: what ``convert``, LAWA and vocabulary expansion write and
``train.init_from`` reads.

Layout of a params checkpoint directory::

    DIR/model.json   the PythiaConfig fields
    DIR/params/      an orbax StandardSave item holding the plain params dict

``load_params`` also reads a training run directory (its latest complete step under
``RUN/checkpoints``, shape from ``RUN/model.json``), one step directory ``RUN/checkpoints/<step>``
(only its ``params`` item is restored), and a Hugging Face directory (has ``config.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from cpt_jax.errors import UserError
from cpt_jax.model.pythia import PythiaConfig

Params = dict[str, Any]

MODEL_JSON = "model.json"
PARAMS_ITEM = "params"


def config_to_dict(config: PythiaConfig) -> dict[str, Any]:
    """PythiaConfig as a JSON-ready dict."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any], source: str = "model.json") -> PythiaConfig:
    """PythiaConfig from a dict; keys that are not fields are ignored, bad values are a UserError."""
    fields = {f.name for f in dataclasses.fields(PythiaConfig)}
    try:
        return PythiaConfig(**{k: v for k, v in values.items() if k in fields})
    except TypeError as err:
        raise UserError(f"{source}: {_one_line(err)}") from None


def read_model_json(path: Path) -> PythiaConfig:
    """Read ``model.json`` (a UserError naming the file if it is missing or not JSON)."""
    if not path.is_file():
        raise UserError(f"no model.json at {path}")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {_one_line(err)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return config_from_dict(values, str(path))


def save_params(path: str | Path, params: Params, model_config: PythiaConfig) -> Path:
    """Write ``model.json`` and the orbax ``params/`` item under ``path`` (replacing them)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(path / PARAMS_ITEM, params, force=True)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    if jax.process_index() == 0:
        tmp = path / (MODEL_JSON + ".tmp")
        tmp.write_text(json.dumps(config_to_dict(model_config), indent=2) + "\n")
        tmp.replace(path / MODEL_JSON)
    return path


def latest_step_dir(run_dir: Path) -> Path:
    """The highest-numbered complete step directory under ``RUN/checkpoints``.

    Orbax writes a step under a temporary name and renames it when complete, so only names
    made of digits count (a half-written step is never picked).
    """
    root = run_dir / "checkpoints"
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    steps = [p for p in steps if (p / PARAMS_ITEM).is_dir()]
    if not steps:
        raise UserError(f"no complete checkpoint step with a params item under {root}")
    return max(steps, key=lambda p: int(p.name))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def restore_params_item(item_dir: Path, shardings: Any = None) -> Params:
    """Restore an orbax StandardSave params item, placed with ``shardings`` (a tree matching
    the params) or, when None, on this process's first device."""
    import orbax.checkpoint as ocp

    if not item_dir.is_dir():
        raise UserError(f"no params checkpoint item at {item_dir}")
    ckptr = ocp.StandardCheckpointer()
    try:
        with _quiet_absl():  # an item inside a CheckpointManager step has no step-level metadata file
            meta = ckptr.metadata(item_dir)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise UserError(f"params checkpoint {item_dir} has no readable metadata (corrupt or partial)")
        tree = dict(tree) if not isinstance(tree, dict) else tree
        is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda m: device, tree, is_leaf=is_leaf)
        target = jax.tree.map(
            lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype), sharding=s),
            tree, shardings, is_leaf=is_leaf,
        )
        return ckptr.restore(item_dir, target)
    except UserError:
        raise
    except Exception as err:  # orbax raises many types for a corrupt or partial item
        raise UserError(f"cannot restore params checkpoint {item_dir}: {_one_line(err)}") from None
    finally:
        ckptr.close()


def load_params(path: str | Path) -> tuple[Params, PythiaConfig]:
    """``(params, PythiaConfig)`` from a params checkpoint, a training run directory (latest
    step), one step directory ``RUN/checkpoints/<step>``, or a Hugging Face directory."""
    path = Path(path).absolute()
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint path {path} is not a directory")
    if (path / MODEL_JSON).is_file() and (path / PARAMS_ITEM).is_dir():
        config, item = read_model_json(path / MODEL_JSON), path / PARAMS_ITEM
    elif (path / "checkpoints").is_dir():
        config, item = read_model_json(path / MODEL_JSON), latest_step_dir(path) / PARAMS_ITEM
    elif (path / PARAMS_ITEM).is_dir() and path.parent.name == "checkpoints":
        config, item = read_model_json(path.parent.parent / MODEL_JSON), path / PARAMS_ITEM
    elif (path / "config.json").is_file():
        from cpt_jax.model import hf

        return hf.load_params(path)
    else:
        raise UserError(
            f"{path} is neither a params checkpoint (model.json + params/), a run directory, "
            "a step directory nor a Hugging Face directory (config.json)"
        )
    params = restore_params_item(item)
    _check_shapes(params, config, item)
    return params, config


def _check_shapes(params: Params, config: PythiaConfig, where: Path) -> None:
    """The restored tree must have the shapes ``model.json`` describes."""
    from cpt_jax.model import pythia

    expected = jax.eval_shape(lambda: pythia.init_params(config, jax.random.key(0)))
    flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    name = lambda k: "/".join(str(getattr(p, "key", p)) for p in k)  # noqa: E731
    for key, leaf in flat_e.items():
        if key not in flat_p:
            raise UserError(f"{where}: parameter {name(key)} is missing")
        if tuple(flat_p[key].shape) != tuple(leaf.shape):
            raise UserError(
                f"{where}: parameter {name(key)} has shape {tuple(flat_p[key].shape)}, "
                f"model.json implies {tuple(leaf.shape)}"
            )
    extra = [name(k) for k in flat_p if k not in flat_e]
    if extra:
        raise UserError(f"{where}: unexpected parameter {extra[0]}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
