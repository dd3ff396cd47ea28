"""Context growth without a larger rotary base: the check behind a one-line warning.

Fu et al. 2024 extend a model's context by continuing to train on longer windows *and* raising
the RoPE base (e.g. 10000 -> 500000) or interpolating positions. Training past the context the
``train.init_from`` model was trained on with the same base and no interpolation leaves the
rotary angles of the new positions unlike anything it has seen.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from cpt_jax import checks
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CONFIG, MODEL, locate


class Source(NamedTuple):
    """What a ``train.init_from`` model was trained with: context T_0, rotary base, scaling."""

    context: int
    rotary_emb_base: float
    rope_scaling: float


def _json(path: Any) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _hf_rotary(hf: dict) -> tuple[float, float]:
    """(base, linear factor) from a Hugging Face config.json's spellings."""
    rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    scaling = hf.get("rope_scaling") if isinstance(hf.get("rope_scaling"), dict) else {}
    base = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    factor = rope.get("factor", scaling.get("factor", 1.0)) if kind == "linear" else 1.0
    return float(base), float(factor)


def source_of(init_from: str) -> Source | None:
    """The trained context and rotary settings of a params checkpoint, run dir, step dir or
    Hugging Face dir (``run_dir.locate``; local or ``gs://``), from its JSON files: a run's
    ``train.seq_len`` when its ``config.json`` is there, else ``max_position_embeddings x
    rope_scaling`` (the context the config check allows). None when not found."""
    found = locate(init_from) if init_from else None
    if found is None:
        return None
    if found.kind == "hf":
        hf = _json(found.path / CONFIG)
        if hf is None or "max_position_embeddings" not in hf:
            return None
        base, factor = _hf_rotary(hf)
        return Source(int(hf["max_position_embeddings"] * factor), base, factor)
    model = _json(found.model_root / MODEL)
    if model is None:
        return None
    run = _json(found.model_root / CONFIG) or {}
    train = run.get("train") if isinstance(run.get("train"), dict) else {}
    scaling = float(model.get("rope_scaling", 1.0))
    stated = model.get("max_position_embeddings", 0) * scaling
    return Source(int(train.get("seq_len", stated)), float(model.get("rotary_emb_base", 10000.0)), scaling)


def check_context(model: Any, seq_len: int) -> None:
    """Rotary settings, and T within the context ``max_position_embeddings * rope_scaling``
    (Hugging Face's linear-scaling reading: the factor stretches the stated context)."""
    if not (model.rotary_emb_base > 1.0 and math.isfinite(model.rotary_emb_base)):
        raise UserError(f"model.rotary_emb_base must be a number > 1, got {model.rotary_emb_base}")
    if not (model.rope_scaling >= 1.0 and math.isfinite(model.rope_scaling)):
        raise UserError(f"model.rope_scaling must be a number >= 1 (1 = off), got {model.rope_scaling}")
    checks.positive("model.max_position_embeddings", model.max_position_embeddings)
    context = model.max_position_embeddings * model.rope_scaling
    if seq_len > context:
        shown = f"{context:.0f}" if context == int(context) else f"{context:.1f}"
        raise UserError(
            f"train.seq_len {seq_len} exceeds the model context {shown} (model.max_position_embeddings"
            f" {model.max_position_embeddings} x model.rope_scaling {model.rope_scaling:g}); for a long-context"
            " continuation raise model.max_position_embeddings with model.rotary_emb_base, or set"
            " model.rope_scaling (docs/long_context.md)"
        )


def rope_warning(model_cfg: Any, seq_len: int, init_from: str) -> str | None:
    """One line when ``seq_len`` exceeds the context T_0 the ``init_from`` model was trained on
    while ``rotary_emb_base`` and ``rope_scaling`` are those it was trained with; else None."""
    src = source_of(init_from)
    if src is None or seq_len <= src.context:
        return None
    if float(model_cfg.rotary_emb_base) != src.rotary_emb_base or \
            float(model_cfg.rope_scaling) != src.rope_scaling:
        return None
    return (f"warning: train.seq_len {seq_len} is longer than the {src.context} tokens "
            f"{init_from} was trained on, with the same rotary base {src.rotary_emb_base:g}; "
            "raise model.rotary_emb_base (e.g. 500000, Fu et al. 2024) or set "
            "model.rope_scaling (docs/long_context.md)")
