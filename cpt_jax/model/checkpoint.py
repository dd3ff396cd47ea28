"""Params-only checkpoints: what ``convert``, LAWA and vocabulary expansion write and
``train.init_from`` reads.

Layout of a params checkpoint directory::

    DIR/model.json   the PythiaConfig fields
    DIR/params/      an orbax StandardSave item holding the plain params dict, with a copy of
                     model.json and digest.json (one digest per array, ``cpt_jax.integrity``)

``load_params`` also reads a training run directory (its latest complete step under
``RUN/checkpoints``, shape from ``RUN/model.json``), one step directory ``RUN/checkpoints/<step>``
(only its ``params`` item is restored), and a Hugging Face directory (has ``config.json``).
Every path may be local or ``gs://`` (``cpt_jax.storage``). Reading checks every array
against the digest recorded at save (in ``digest.json``, or in a step's ``meta``) and refuses
non-finite weights unless allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Iterator

import jax
import numpy as np

from cpt_jax import integrity, run_dir, storage, tree_io
from cpt_jax.errors import UserError
from cpt_jax.model import hf, pythia
from cpt_jax.model.pythia import PythiaConfig
from cpt_jax.run_dir import CHECKPOINTS, MODEL, PARAMS_ITEM, PARAMS_POINTER, RunDir, params_item

Params = dict[str, Any]

STAGING = ".partial"  # save_params writes here first (local)


def config_to_dict(config: PythiaConfig) -> dict[str, Any]:
    """PythiaConfig as a JSON-ready dict."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any], source: str = "model.json") -> PythiaConfig:
    """PythiaConfig from a dict; keys that are not fields are ignored, bad values are a UserError."""
    fields = {f.name for f in dataclasses.fields(PythiaConfig)}
    known = {k: v for k, v in values.items() if k in fields}
    hf.check_values(known, source)
    try:
        return PythiaConfig(**known)
    except TypeError as err:
        raise UserError(f"{source}: {_one_line(err)}") from None


def read_model_json(path: Any) -> PythiaConfig:
    """Read ``model.json`` (a UserError naming the file if it is missing or not JSON)."""
    path = storage.path(path)
    if not path.exists():
        raise UserError(f"no model.json at {path}")
    values = storage.read_json(path)
    if not isinstance(values, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return config_from_dict(values, str(path))


def save_params(path: Any, params: Params, model_config: PythiaConfig) -> Any:
    """Write ``model.json`` and the orbax ``params/`` item under ``path``, replacing a
    checkpoint there without ever leaving a partial one (other files in ``path`` are kept).

    Both are first written completely to ``path/.partial/``. Locally the new ``params/`` then
    takes the old one's place in one step (``renameat2(RENAME_EXCHANGE)``; where the kernel
    lacks it, two renames with the old item kept as ``.partial/params`` until the new one is in
    place) and ``model.json`` is replaced atomically right after, so a kill at any moment leaves
    a complete checkpoint (only a kill between those two steps, while the model's shape
    changes, leaves the old ``model.json`` beside the new params: while ``.partial/`` is there,
    readers take the copy of ``model.json`` inside ``params/``, which moves with the params).
    Object stores (``gs://``) cannot rename: the new item is written beside the old one as
    ``params.<token>/`` (with its own ``model.json``), and only once it is complete does the
    one small object ``params.current`` switch to name it; the old item is deleted after that.
    A kill at any moment leaves the pointer naming a complete item.
    """
    path = storage.path(path)
    digest = integrity.tree_digest(params)[0]  # every process: a collective for global arrays
    if storage.is_remote(path):
        return _save_remote(path, params, model_config, digest)
    staging = path / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    _write_item(staging / PARAMS_ITEM, params)
    if jax.process_index() != 0:
        return path
    storage.write_json(staging / MODEL, config_to_dict(model_config))
    _write_records(staging / PARAMS_ITEM, model_config, digest)
    _replace_local(staging, path)
    return path


def _shared_token() -> str:
    """A fresh name part, the same on every process."""
    import uuid

    token = uuid.uuid4().int % (2**31)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    return f"{token:08x}"


def _write_records(item: Any, model_config: PythiaConfig, digest: dict[str, str]) -> None:
    """The item's own copy of ``model.json`` and its digests."""
    storage.write_json(item / MODEL, config_to_dict(model_config))
    storage.write_json(item / integrity.DIGEST_FILE, digest)


def _save_remote(path: Any, params: Params, model_config: PythiaConfig, digest: dict[str, str]) -> Any:
    """Object stores: the new item beside the old one, then the pointer, then the cleanup."""
    item = path / f"{PARAMS_ITEM}.{_shared_token()}"
    _write_item(item, params)
    if jax.process_index() != 0:
        return path
    _write_records(item, model_config, digest)
    storage.write_text(path / PARAMS_POINTER, item.name)  # the switch: one small object write
    storage.write_json(path / MODEL, config_to_dict(model_config))
    for old in path.iterdir():  # the previous item (and any an interrupted save left)
        stale = old.name == PARAMS_ITEM or old.name.startswith(f"{PARAMS_ITEM}.")
        if stale and old.name != item.name and old.is_dir() or old.name == STAGING:
            old.rmtree()
    return path


def _write_item(item: Any, params: Params) -> None:
    """Write one orbax params item; a full disk is one line naming it and the bytes needed."""
    import orbax.checkpoint as ocp

    needed = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    if jax.process_index() == 0:
        storage.check_free_space(item.parent, needed, "the params checkpoint")
    ckptr = ocp.StandardCheckpointer()
    try:
        with storage.full_disk_is_one_line(item, "the params checkpoint", needed):
            ckptr.save(item, params, force=True)
            ckptr.wait_until_finished()
    finally:
        ckptr.close()


def _replace_local(staging: Any, path: Any) -> None:
    """Move the complete staged item and ``model.json`` into ``path``, atomically each."""
    import shutil

    src, dst = os.fspath(staging / PARAMS_ITEM), os.fspath(path / PARAMS_ITEM)
    if not os.path.lexists(dst):
        os.rename(src, dst)
    elif not _exchange(src, dst):
        old = src + ".old"
        os.rename(dst, old)
        os.rename(src, dst)
    os.replace(os.fspath(staging / MODEL), os.fspath(path / MODEL))
    shutil.rmtree(os.fspath(staging))


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def restore_params_item(item_dir: Any, shardings: Any = None) -> Params:
    """Restore an orbax StandardSave params item, placed with ``shardings`` (a tree matching
    the params: each process reads only its shards) or, when None, on this process's first
    device."""
    import orbax.checkpoint as ocp

    item_dir = storage.path(item_dir)
    if not item_dir.is_dir():
        raise UserError(f"no params checkpoint item at {item_dir}")
    specs = param_specs(item_dir)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, specs)
    target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), specs, shardings)
    ckptr = ocp.StandardCheckpointer()
    try:
        return storage.read_remote(item_dir, "the params", lambda: ckptr.restore(item_dir, target))
    except ConnectionError:  # storage did not answer: exit 75, not a damaged checkpoint
        raise
    except Exception as err:  # orbax raises many types for a corrupt or partial item
        raise UserError(f"cannot restore params checkpoint {item_dir}: {_one_line(err)}") from None
    finally:
        ckptr.close()


def _step_config(run: RunDir, step: int) -> PythiaConfig:
    """The model of one training step: the one it recorded, else the run's ``model.json``."""
    model = (run.step_meta(step) or {}).get("model")
    if isinstance(model, dict):
        return config_from_dict(model, f"checkpoint step {step} ({run.step_dir(step)}) meta")
    return read_model_json(run.file(MODEL))


def locate(path: Any) -> tuple[PythiaConfig, Any] | None:
    """``(config, params item)`` of a params checkpoint, run or step directory (the kinds of
    ``run_dir.locate``); None for a Hugging Face directory."""
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint path {path} is not a directory")
    found = run_dir.locate(path)
    if found is None:
        raise UserError(f"{path} is neither a params checkpoint (model.json + params/), a run directory, "
                        "a step directory nor a Hugging Face directory (config.json)")
    if found.kind == "params":
        item = params_item(path)
        # a save interrupted after the params swap (its .partial/ is still there) may have left
        # the old model.json: the copy inside the item moved with the params (and on gs://,
        # where the pointer switches first, the item's own copy is the one that matches)
        inner = item / MODEL
        own = ((path / STAGING).exists() or item.name != PARAMS_ITEM) and inner.exists()
        return read_model_json(inner if own else path / MODEL), item
    if found.kind == "run":
        step = found.run.latest_step()
        if step is None:
            raise UserError(f"no complete checkpoint step with a params item under {found.run.checkpoints}")
        return _step_config(found.run, step), found.run.step_dir(step) / PARAMS_ITEM
    if found.kind == "step":
        return _step_config(found.run, found.step), path / PARAMS_ITEM
    return None


def source_config(path: Any) -> PythiaConfig:
    """The model config of anything ``load_params`` reads, without reading any weights."""
    path = storage.path(path)
    found = locate(path)
    return found[0] if found else hf.read_config(storage.readable_dir(path, "hf"))


def load_params(path: Any, shardings: Any = None, allow_nonfinite: bool = False,
                hint: str = "pass --allow-nonfinite to use it anyway") -> tuple[Params, PythiaConfig]:
    """``(params, PythiaConfig)`` from a params checkpoint, a training run directory (latest
    step), one step directory ``RUN/checkpoints/<step>``, or a Hugging Face directory (fp32
    host arrays); orbax items are placed with ``shardings`` (a tree matching the params) or
    on this process's first device. Every array is checked against its recorded digest, and
    NaN or inf weights are refused unless ``allow_nonfinite`` (one line each)."""
    path = storage.path(path)
    with storage.reading(path, "a checkpoint"):
        found = locate(path)
        if found is None:
            params, config = hf.load_params(storage.readable_dir(path, "hf"))
            recorded, where = None, os.fspath(path)
        else:
            config, item = found
            _check_shapes(param_specs(item), config, item)
            params = restore_params_item(item, shardings)
            recorded, where = recorded_digest(item), _where(item)
    digest, nonfinite = integrity.tree_digest(params)
    integrity.compare(recorded, digest, where)
    integrity.refuse_nonfinite(nonfinite, where, allow_nonfinite, hint)
    return params, config


def _is_step(item: Any) -> bool:
    return item.parent.parent.name == CHECKPOINTS and item.parent.name.isdigit()


def _where(item: Any) -> str:
    """How messages name the checkpoint holding the params ``item``."""
    if _is_step(item):
        return f"checkpoint step {item.parent.name} ({item.parent})"
    return os.fspath(item.parent)


def recorded_digest(item: Any) -> dict[str, str] | None:
    """The digests recorded for a params item (its ``digest.json``, or its step's ``meta``,
    itself checked against its own digest); None for a checkpoint saved before digests were
    recorded."""
    own = item / integrity.DIGEST_FILE
    if own.exists():
        digest = storage.read_json(own)
        return digest if isinstance(digest, dict) else {"(digest.json)": "not an object"}
    step_dir = item.parent
    if not _is_step(item):
        return None
    meta = RunDir(step_dir.parent.parent).step_meta(int(step_dir.name))
    if meta is None:
        raise UserError(f"{_where(item)}: its meta record is missing or unreadable")
    integrity.check_meta(meta, _where(item))
    return (meta.get("digest") or {}).get("params")


def param_specs(item_dir: Any) -> Params:
    """The params tree of an orbax item as ``ShapeDtypeStruct``s (from metadata; nothing read)."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        with _quiet_absl():
            meta = storage.read_remote(item_dir, "the params metadata", lambda: ckptr.metadata(storage.path(item_dir)))
    except ConnectionError:
        raise
    except Exception as err:
        raise UserError(f"cannot read params checkpoint {item_dir}: {_one_line(err)}") from None
    finally:
        ckptr.close()
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if tree is None:
        raise UserError(f"params checkpoint {item_dir} has no readable metadata (corrupt or partial)")
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)),
                        dict(tree), is_leaf=is_leaf)


def _check_shapes(params: Params, config: PythiaConfig, where: Any) -> None:
    """The restored tree must have the shapes ``model.json`` describes."""
    expected = jax.eval_shape(lambda: pythia.init_params(config, jax.random.key(0)))
    flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    name = lambda k: tree_io.path_name(k)  # noqa: E731
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
