"""Latest-weight averaging (LAWA; Kaddour 2022, Sanyal et al. 2023), offline and streaming.

LAWA replaces the latest parameters theta_t by the uniform mean of the k latest checkpoints
taken every nu steps: ``theta_bar_t = (1/k) * sum_{i=0}^{k-1} theta_{t - i*nu}``. Optimizer
state is never averaged (it is never even read here).

Offline averaging streams: leaf group by leaf group, each checkpoint's part is restored onto
this host (as numpy, whatever sharding or process count wrote them) and added into a running
fp32 sum, so peak host memory stays below two copies of the params for any k. Checkpoint trees are checked against
each other from orbax metadata before any array is read.

Sources are step directories of a training run (``RUN/checkpoints/<step>/params``, model shape
in ``RUN/model.json``) or params-only checkpoints (``DIR/params`` + ``DIR/model.json``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator

import numpy as np

from cpt_jax import storage
from cpt_jax.errors import UserError
from cpt_jax.integrity import array_digest_np, compare, refuse_nonfinite
from cpt_jax.tree_io import accumulator_dtype, leaf_specs, restore_numpy, unflatten
from cpt_jax.run_dir import RunDir

Tree = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Source:
    """One checkpoint to average: a label for messages, its orbax ``params`` item, its model."""

    label: str
    params_dir: str
    model: dict[str, Any]
    digest: dict[str, str] | None = None  # recorded at save (None: not recorded, not checked)


# ---------------------------------------------------------------------------------------
# finding and choosing checkpoints


def run_steps(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints under ``RUN/checkpoints`` (local or ``gs://``)."""
    run = RunDir(run_dir)
    if not run.checkpoints.is_dir():
        raise UserError(f"{run_dir} is not a training run dir (no checkpoints/ inside)")
    steps = run.complete_steps()
    if not steps:
        raise UserError(f"{run.checkpoints} holds no finished checkpoints")
    return steps


def select_steps(
    steps: list[int],
    last: int | None = None,
    every: int | None = None,
    explicit: list[int] | None = None,
    allow_uneven: bool = False,
) -> list[int]:
    """The checkpoints to average: ``explicit`` steps, or the ``last`` k of those that are
    multiples of ``every`` (nu; all checkpoints when None). With ``every``, the k steps must be
    ``t - (k-1) nu, ..., t`` (LAWA's even spacing): a missing checkpoint is refused in one line
    unless ``allow_uneven``."""
    available = sorted(steps)
    if explicit:
        if last is not None or every is not None:
            raise UserError("give either explicit steps or --last/--every, not both")
        missing = [s for s in explicit if s not in available]
        if missing:
            raise UserError(f"no checkpoint at step {missing[0]} (have {_short(available)})")
        if len(set(explicit)) != len(explicit):
            raise UserError(f"a step is listed twice in {explicit}")
        return sorted(explicit)
    if last is None or last < 1:
        raise UserError(f"the number of checkpoints to average must be >= 1, got {last}")
    pool = available
    if every is not None:
        if every < 1:
            raise UserError(f"the checkpoint spacing nu must be >= 1, got {every}")
        pool = [s for s in available if s % every == 0]
    if len(pool) < last:
        where = f" at multiples of {every}" if every is not None else ""
        raise UserError(f"asked for the last {last} checkpoints but only {len(pool)} exist{where}")
    chosen = pool[-last:]
    if every is not None and not allow_uneven:
        check_spacing(chosen, every)
    return chosen


def check_spacing(steps: list[int], every: int) -> None:
    """Refuse steps whose gaps are not all ``every`` (nu), naming the gaps."""
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    if any(g != every for g in gaps):
        missing = [s for s in range(steps[0], steps[-1], every) if s not in steps]
        raise UserError(
            f"steps {_short(steps)} are not evenly spaced by --every {every} (gaps "
            f"{_short(gaps)}; no checkpoint at {_short(missing)}): pass --allow-uneven to "
            "average them anyway")


def windows(steps: list[int], k: int, every: int | None = None,
            allow_uneven: bool = False) -> list[list[int]]:
    """Sliding LAWA windows along a run: for each checkpoint t (multiple of nu) with k - 1
    earlier ones, the window [t - (k-1) nu, ..., t] as checkpoint steps (evenly spaced unless
    ``allow_uneven``, as in :func:`select_steps`)."""
    pool = [s for s in sorted(steps) if every is None or s % every == 0]
    if k < 1 or len(pool) < k:
        raise UserError(f"sliding windows of {k} checkpoints need at least {k}, found {len(pool)}")
    spans = [pool[i - k + 1 : i + 1] for i in range(k - 1, len(pool))]
    if every is not None and not allow_uneven:
        check_spacing(pool, every)
    return spans


def _short(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}..{steps[-1]} ({len(steps)})"


def run_sources(run_dir: str, steps: list[int]) -> list[Source]:
    """Sources for some steps of a training run (model shape from ``RUN/model.json``)."""
    from cpt_jax.model.checkpoint import config_to_dict, locate, recorded_digest

    run = RunDir(run_dir)
    sources = []
    for s in steps:
        config, item = locate(run.step_dir(s)) or (None, None)  # the model the step recorded
        sources.append(Source(f"step {s}", os.fspath(item), config_to_dict(config), recorded_digest(item)))
    return sources


def dir_source(path: str) -> Source:
    """A source from a params checkpoint, one run step dir ``RUN/checkpoints/<step>`` or a run
    (its newest step): the kinds ``run_dir.locate`` tells apart."""
    from cpt_jax.model.checkpoint import config_to_dict, locate, recorded_digest

    found = locate(storage.path(path))
    if found is None:  # a Hugging Face folder
        raise UserError(f"{path} holds no orbax params item (no params/ inside)")
    config, item = found
    return Source(os.fspath(storage.path(path)), os.fspath(item), config_to_dict(config),
                  recorded_digest(item))


# ---------------------------------------------------------------------------------------
# streaming average


def _normal_model(model: dict[str, Any]) -> dict[str, Any]:
    """model.json with PythiaConfig's defaults filled in (so a partial file compares equal)."""
    from cpt_jax.model.checkpoint import config_from_dict

    try:
        return dataclasses.asdict(config_from_dict(model))
    except (UserError, TypeError, ValueError):
        return dict(model)


def check_compatible(sources: list[Source]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Same model.json, same leaves, shapes and dtypes in every source; else one UserError line."""
    if not sources:
        raise UserError("no checkpoints to average")
    first = sources[0]
    ref = leaf_specs(first.params_dir)
    ref_model = _normal_model(first.model)
    for src in sources[1:]:
        model = _normal_model(src.model)
        if model != ref_model:
            diff = sorted(k for k in set(model) | set(ref_model) if model.get(k) != ref_model.get(k))
            raise UserError(
                f"{src.label}: model.json differs from {first.label} in {', '.join(diff[:4])}"
            )
        specs = leaf_specs(src.params_dir)
        for path in sorted(set(ref) | set(specs)):
            if path not in specs:
                raise UserError(f"{src.label}: leaf '{path}' is missing (present in {first.label})")
            if path not in ref:
                raise UserError(f"{src.label}: extra leaf '{path}' (absent in {first.label})")
            if specs[path] != ref[path]:
                (s0, d0), (s1, d1) = ref[path], specs[path]
                raise UserError(
                    f"{src.label}: leaf '{path}' is {d1.name}{list(s1)}, "
                    f"{first.label} has {d0.name}{list(s0)}"
                )
    return ref


def leaf_groups(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> list[list[str]]:
    """Leaves packed in order into groups no bigger than the largest leaf (fewer restores)."""
    size = {p: int(np.prod(shape)) * dtype.itemsize for p, (shape, dtype) in specs.items()}
    budget = max(size.values(), default=0)
    groups: list[list[str]] = []
    used = budget + 1
    for path in specs:
        if used + size[path] > budget:
            groups.append([])
            used = 0
        groups[-1].append(path)
        used += size[path]
    return groups


def _return_freed_buffers_to_os() -> None:
    """Make glibc hand large freed buffers back to the OS (fixed 1 MiB mmap threshold).

    Tensorstore allocates each restored array on its worker threads; with glibc's default
    dynamic mmap threshold those buffers land in per-thread arenas and are kept after being
    freed, so RSS would grow by one checkpoint per restore although only two are ever live.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def average(
    sources: list[Source],
    restore: Callable[[str, list[str]], dict[str, np.ndarray]] = restore_numpy,
    allow_nonfinite: bool = False,
) -> Tree:
    """Uniform mean of the sources' params, ``theta_bar = (1/k) sum_i theta_i``, streaming.

    Leaf-group-major: for each group of leaves (no bigger than the largest leaf), restore that
    group from each checkpoint in turn and add it into an fp32 running sum (fp64 for fp64
    leaves), then divide by k and cast back to the leaf's dtype. Peak host memory: one copy of
    the result plus about two groups in flight, whatever k is. Each array read is checked
    against its source's recorded digest, and NaN or inf is refused unless ``allow_nonfinite``.
    """
    specs = check_compatible(sources)
    _return_freed_buffers_to_os()
    out: dict[str, np.ndarray] = {}
    k = len(sources)
    for group in leaf_groups(specs):
        acc: dict[str, np.ndarray] = {}
        for src in sources:
            part = restore(src.params_dir, group)
            for path in group:
                x = np.asarray(part.pop(path))
                _check_leaf(src, path, x, allow_nonfinite)
                if path not in acc:
                    want = accumulator_dtype(specs[path][1])
                    acc[path] = x if x.dtype == want and x.flags.writeable else x.astype(want)
                else:
                    np.add(acc[path], x, out=acc[path])
                del x
            del part
        for path in group:
            summed = acc.pop(path)
            np.divide(summed, k, out=summed)
            dtype = specs[path][1]
            out[path] = summed if summed.dtype == dtype else summed.astype(dtype)
            del summed
    return unflatten({path: out[path] for path in specs})


def _check_leaf(src: Source, path: str, x: np.ndarray, allow_nonfinite: bool) -> None:
    """One array of a source: its recorded digest, and no NaN or inf unless allowed."""
    digest, bad = array_digest_np(x)
    if src.digest is not None:
        compare({path: src.digest.get(path, "(none recorded)")}, {path: digest}, src.label)
    refuse_nonfinite({path: bad}, src.label, allow_nonfinite)


def iter_window_averages(
    run_dir: str, spans: list[list[int]], allow_nonfinite: bool = False
) -> Iterator[tuple[list[int], Tree]]:
    """One average per window (each summed afresh: exact, k restores per window)."""
    for span in spans:
        yield span, average(run_sources(run_dir, span), allow_nonfinite=allow_nonfinite)


# ---------------------------------------------------------------------------------------
# writing


def save_average(out_dir: str, params: Tree, model: dict[str, Any], info: dict[str, Any]) -> None:
    """Write ``params`` as a params-only checkpoint (``model.json`` + orbax ``params/``) and
    ``lawa.json`` (which checkpoints were averaged)."""
    from cpt_jax.model.checkpoint import config_from_dict, save_params

    out = save_params(out_dir, params, config_from_dict(model))
    storage.write_json(out / "lawa.json", info)
