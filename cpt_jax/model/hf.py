"""Hugging Face GPT-NeoX import and export.

``load(dir)`` reads ``config.json`` (rotary settings spelled ``rotary_pct``/``rotary_emb_base``,
``partial_rotary_factor``/``rope_theta`` or a ``rope_parameters`` dict) and the weights
(``model.safetensors``, sharded safetensors, ``pytorch_model.bin`` or sharded ``.bin``; the
``.bin`` reader needs no torch) and returns a ``Pythia`` NNX model. Torch linears store
``W [out, in]``; our kernels are ``W.T [in, out]`` stacked over layers. Buffers
(``attention.bias``, ``attention.masked_bias``, ``rotary_emb.inv_freq``) are skipped.
``save(model, dir)`` writes ``model.safetensors`` + ``config.json`` that
``transformers.GPTNeoXForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from cpt_jax import checks
from cpt_jax.errors import UserError
from cpt_jax.model import weight_files
from cpt_jax.model.pythia import Params, Pythia, PythiaConfig, pure_params

PREFIX = "gpt_neox."
# our layer param -> HF module name inside gpt_neox.layers.N
_LAYER_LINEARS = {
    "qkv": "attention.query_key_value",
    "out": "attention.dense",
    "fc1": "mlp.dense_h_to_4h",
    "fc2": "mlp.dense_4h_to_h",
}
_LAYER_NORMS = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm"}
_BUFFER_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq",
                    "rotary_emb.original_inv_freq")


# ---------------------------------------------------------------------------------------
# config.json <-> PythiaConfig


def _rotary(hf: dict[str, Any]) -> tuple[float, float, float]:
    """(rotary_pct, base, linear position-interpolation factor) from any of the spellings."""
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(rope, dict) or not isinstance(scaling, dict):
        raise UserError("config.json: rope_parameters / rope_scaling must be objects")
    pct = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    base = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", scaling.get("rope_type", scaling.get("type", "default"))))
    factor = rope.get("factor", scaling.get("factor", 1.0))
    if kind not in ("default", "linear"):
        raise UserError(f"config.json: rope type '{kind}' is not supported (only default and linear)")
    return float(pct), float(base), float(factor if kind == "linear" else 1.0)


def config_from_hf(hf: dict[str, Any], dtype: str = "float32") -> PythiaConfig:
    """PythiaConfig from a GPT-NeoX ``config.json`` dict."""
    if hf.get("model_type", "gpt_neox") != "gpt_neox":
        raise UserError(f"config.json: model_type '{hf.get('model_type')}' is not gpt_neox")
    try:
        pct, base, factor = _rotary(hf)
        fields = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            intermediate_size=int(hf.get("intermediate_size") or 4 * int(hf["hidden_size"])),
            rotary_pct=pct,
            rotary_emb_base=base,
            rope_scaling=factor,
            use_parallel_residual=bool(hf.get("use_parallel_residual", True)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            attention_bias=bool(hf.get("attention_bias", True)),
            hidden_act=str(hf.get("hidden_act", "gelu")),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            param_dtype=dtype,
            compute_dtype=dtype,
        )
    except KeyError as err:
        raise UserError(f"config.json: required key {err.args[0]} is missing") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise UserError(f"config.json: {err}") from None
    check_values(fields, "config.json")
    return PythiaConfig(**fields)


# fields that must be positive (sizes) and positive finite (floats) in any model config
_SIZES = ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings")
_FLOATS = ("layer_norm_eps", "rotary_emb_base", "rope_scaling")


def check_values(fields: dict[str, Any], where: str) -> None:
    """Refuse model values that cannot be right (zero heads or layers, NaN or <= 0 eps, a
    rotary fraction outside 0..1), in one line naming ``where`` and the field."""
    for name in _SIZES:
        if name in fields and not (isinstance(fields[name], int) and fields[name] > 0):
            raise UserError(f"{where}: {name} must be a positive integer, got {fields[name]!r}")
    if fields.get("intermediate_size") not in (None, 0) and not (
            isinstance(fields["intermediate_size"], int) and fields["intermediate_size"] > 0):
        raise UserError(f"{where}: intermediate_size must be positive, got {fields['intermediate_size']!r}")
    for name in _FLOATS:
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"{where}: {name} must be a positive finite number, got {value!r}")
    pct = fields.get("rotary_pct")
    if pct is not None and not (isinstance(pct, (int, float)) and 0 <= pct <= 1):
        raise UserError(f"{where}: rotary_pct must be within 0..1, got {pct!r}")


def config_to_hf(c: PythiaConfig, dtype: str) -> dict[str, Any]:
    """A ``config.json`` dict for GPTNeoXForCausalLM (transformers 4.x and 5.x spellings)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rotary_emb_base,
                            "partial_rotary_factor": c.rotary_pct}
    out: dict[str, Any] = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.ffn_size,
        "hidden_act": c.hidden_act,
        "rotary_pct": c.rotary_pct,
        "rotary_emb_base": c.rotary_emb_base,
        "use_parallel_residual": c.use_parallel_residual,
        "layer_norm_eps": c.layer_norm_eps,
        "attention_bias": c.attention_bias,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if c.rope_scaling != 1.0:
        rope.update(rope_type="linear", factor=c.rope_scaling)
        out["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": c.rope_scaling}
    out["rope_parameters"] = rope
    return out


def read_config(path: str | Path, dtype: str = "float32") -> PythiaConfig:
    """PythiaConfig from ``path/config.json``."""
    f = Path(path) / "config.json"
    try:
        hf = json.loads(f.read_text())
    except FileNotFoundError:
        raise UserError(f"no config.json in {path}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {f}: {err}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{f} does not hold a JSON object")
    return config_from_hf(hf, dtype)


# ---------------------------------------------------------------------------------------
# tensors


def _get(refs: dict[str, Any], name: str, shape: tuple[int, ...], where: Path) -> np.ndarray:
    ref = refs.get(name)
    if ref is None:
        raise UserError(f"{where}: tensor {name} is missing")
    if tuple(ref.shape) != shape:
        raise UserError(f"{where}: tensor {name} has shape {tuple(ref.shape)}, config.json implies {shape}")
    return ref.read()


def _file_dtype(refs: dict[str, Any]) -> str:
    dt = np.dtype(refs[PREFIX + "embed_in.weight"].dtype) if PREFIX + "embed_in.weight" in refs else np.dtype("float32")
    return dt.name


def load_params(path: str | Path, dtype: DTypeLike | None = "float32") -> tuple[Params, PythiaConfig]:
    """``(params, PythiaConfig)`` from a Hugging Face GPT-NeoX directory. ``dtype=None`` keeps
    the files' dtype (as stored); otherwise params and compute use ``dtype`` (``jnp.float32``,
    ``np.float32`` or ``"float32"``)."""
    path = Path(path)
    if dtype is not None:
        dtype = checks.dtype_name("dtype", dtype)
    if not path.is_dir():
        raise UserError(f"Hugging Face directory {path} does not exist")
    read_config(path)  # impossible values are refused before any weight is read
    refs, _ = weight_files.read_weights(path)
    refs = {k[len("model."):] if k.startswith("model.gpt_neox.") else k: v for k, v in refs.items()}
    dtype = dtype or _file_dtype(refs)
    c = read_config(path, dtype)
    d, L, F, V = c.hidden_size, c.num_layers, c.ffn_size, c.vocab_size
    known = {PREFIX + "embed_in.weight", "embed_out.weight", "lm_head.weight",
             PREFIX + "final_layer_norm.weight", PREFIX + "final_layer_norm.bias"}
    cast = lambda a: jnp.asarray(np.asarray(a).astype(np.dtype(jnp.dtype(dtype))))  # noqa: E731

    out_name = "embed_out.weight" if "embed_out.weight" in refs else "lm_head.weight"
    params: Params = {"embed_in": cast(_get(refs, PREFIX + "embed_in.weight", (V, d), path))}
    shapes = {"qkv": (3 * d, d), "out": (d, d), "fc1": (F, d), "fc2": (d, F)}
    layers: Params = {}
    for ours, norm in _LAYER_NORMS.items():
        names = [(f"{PREFIX}layers.{i}.{norm}.weight", f"{PREFIX}layers.{i}.{norm}.bias") for i in range(L)]
        known.update(n for pair in names for n in pair)
        layers[ours] = {
            "scale": cast(np.stack([_get(refs, w, (d,), path) for w, _ in names])),
            "bias": cast(np.stack([_get(refs, b, (d,), path) for _, b in names])),
        }
    for ours, module in _LAYER_LINEARS.items():
        has_bias = c.attention_bias or ours in ("fc1", "fc2")
        w_names = [f"{PREFIX}layers.{i}.{module}.weight" for i in range(L)]
        b_names = [f"{PREFIX}layers.{i}.{module}.bias" for i in range(L)]
        known.update(w_names + (b_names if has_bias else []))
        group = {"kernel": cast(np.stack([_get(refs, n, shapes[ours], path).T for n in w_names]))}
        if has_bias:
            group["bias"] = cast(np.stack([_get(refs, n, shapes[ours][:1], path) for n in b_names]))
        layers[ours] = group
    params["layers"] = {k: layers[k] for k in ("ln1", "ln2", "qkv", "out", "fc1", "fc2")}
    params["final_ln"] = {
        "scale": cast(_get(refs, PREFIX + "final_layer_norm.weight", (d,), path)),
        "bias": cast(_get(refs, PREFIX + "final_layer_norm.bias", (d,), path)),
    }
    if out_name not in refs:
        raise UserError(f"{path}: tensor embed_out.weight (or lm_head.weight) is missing")
    params["embed_out"] = cast(_get(refs, out_name, (V, d), path))
    extra = [n for n in refs if n not in known and not n.endswith(_BUFFER_SUFFIXES)]
    if extra:
        raise UserError(f"{path}: unexpected tensor {sorted(extra)[0]} (not a GPT-NeoX causal LM?)")
    return params, c


def load(path: str | Path, dtype: DTypeLike | None = "float32") -> Pythia:
    """A ``Pythia`` NNX model from a Hugging Face GPT-NeoX directory; call it on int ids
    ``[B, T]`` for logits ``[B, T, V]``."""
    params, config = load_params(path, dtype)
    return Pythia(config, params=params)


def to_hf_tensors(params: Params, config: PythiaConfig) -> dict[str, np.ndarray]:
    """The params as HF-named numpy tensors in torch layout ``[out, in]``."""
    host = jax.tree.map(np.asarray, params)
    t: dict[str, np.ndarray] = {PREFIX + "embed_in.weight": host["embed_in"]}
    lay = host["layers"]
    for i in range(config.num_layers):
        p = f"{PREFIX}layers.{i}."
        for ours, norm in _LAYER_NORMS.items():
            t[p + norm + ".weight"] = lay[ours]["scale"][i]
            t[p + norm + ".bias"] = lay[ours]["bias"][i]
        for ours, module in _LAYER_LINEARS.items():
            t[p + module + ".weight"] = np.ascontiguousarray(lay[ours]["kernel"][i].T)
            if "bias" in lay[ours]:
                t[p + module + ".bias"] = lay[ours]["bias"][i]
    t[PREFIX + "final_layer_norm.weight"] = host["final_ln"]["scale"]
    t[PREFIX + "final_layer_norm.bias"] = host["final_ln"]["bias"]
    t["embed_out.weight"] = host["embed_out"]
    return t


def save(model_or_params: Pythia | Params, path: str | Path, model_config: PythiaConfig | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (tensors in the params' own dtype)."""
    if isinstance(model_or_params, dict):
        if model_config is None:
            raise UserError("hf.save of a params dict needs model_config")
        params, config = model_or_params, model_config
    else:
        params, config = pure_params(model_or_params), model_config or model_or_params.config
    tensors = to_hf_tensors(params, config)
    dtypes = {a.dtype for a in tensors.values()}
    if len(dtypes) != 1:
        raise UserError(f"hf.save: params mix dtypes {sorted(str(d) for d in dtypes)}; cast them to one")
    dtype = np.dtype(dtypes.pop()).name
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weight_files.write_safetensors(path / "model.safetensors", tensors)
    hf_cfg = config_to_hf(dataclasses.replace(config, param_dtype=dtype), dtype)
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    return path
