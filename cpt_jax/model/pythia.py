"""Pythia / GPT-NeoX in Flax NNX, computing exactly what Hugging Face ``GPTNeoXForCausalLM`` does.

Block (parallel residual, every Pythia size): ``x + attn(ln1(x)) + mlp(ln2(x))``; sequential
otherwise: ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))``. LayerNorms in fp32, fused QKV whose
output features are ordered (head, {q, k, v}, hd), NeoX rotary on the first
``r = int(hd * rotary_pct)`` dims of q and k, exact-erf GELU MLP d -> 4d -> d, untied
``embed_in`` / ``embed_out``.

The functional core is ``forward(params, tokens, config)`` over a plain nested dict:

    embed_in [V, d], embed_out [V, d], final_ln {scale, bias} [d],
    layers: ln1, ln2 {scale, bias} [L, d]; qkv {kernel [L, d, 3d], bias [L, 3d]};
            out {kernel [L, d, d], bias}; fc1 {kernel [L, d, F], bias}; fc2 {kernel [L, F, d], bias}

Layers are stacked on a leading axis and scanned. ``Pythia`` is the NNX module holding those
arrays; ``nnx.split`` / ``pure_params`` turn it into that dict for jitted code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from cpt_jax import checks, layout, tree_io
from cpt_jax.errors import UserError
from cpt_jax.model import attention as attn_lib
from cpt_jax.model.context import check_context, rope_warning
from cpt_jax.model.presets import PRESETS

Params = dict[str, Any]
DType = Literal["float32", "bfloat16", "float16"]
Remat = Literal["none", "full", "dots"]  # dots: save matmul outputs
DTYPES: tuple[str, ...] = get_args(DType)
REMATS: tuple[str, ...] = get_args(Remat)

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class PythiaConfig:
    """Shape and numerics of a GPT-NeoX model (the fields of an HF ``config.json`` we honour)."""

    vocab_size: int = 50304
    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 0  # 0 -> 4 * hidden_size
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    rope_scaling: float = 1.0
    use_parallel_residual: bool = True
    layer_norm_eps: float = 1e-5
    attention_bias: bool = True
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048
    param_dtype: DType = "float32"
    compute_dtype: DType = "float32"
    attention: attn_lib.Attention = "auto"
    attention_chunk: int = 512
    attention_block_q: int = 512  # splash kernel query tile (a multiple of 128)
    attention_block_kv: int = 512  # splash kernel key/value tile (a multiple of 128)
    remat: Remat = "none"
    scan_layers: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise UserError(f"hidden_act '{self.hidden_act}' is not one of {', '.join(_ACTIVATIONS)}")
        checks.choice("model.attention", self.attention, attn_lib.IMPLEMENTATIONS)
        for name in ("param_dtype", "compute_dtype"):  # jnp / np dtypes are stored by name
            object.__setattr__(self, name, checks.dtype_name(f"model.{name}", getattr(self, name), DTYPES))
        checks.choice("model.remat", self.remat, REMATS)
        checks.positive("model.attention_chunk", self.attention_chunk)
        for name in ("attention_block_q", "attention_block_kv"):
            size = getattr(self, name)
            if not (isinstance(size, int) and size > 0 and size % attn_lib.LANES == 0):
                raise UserError(f"model.{name} must be a positive multiple of {attn_lib.LANES}, got {size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """r = int(hd * rotary_pct); HF rotates 2 * ceil(r / 2) dims."""
        return int(self.head_dim * self.rotary_pct)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @classmethod
    def from_config(cls, model_cfg: Any) -> "PythiaConfig":
        """From the ``model`` section of an experiment config (a preset fills the shape)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(model_cfg).items() if k in fields}
        preset = dict(model_cfg).get("preset", "")
        if preset:
            p = PRESETS[preset]
            values.update(
                num_layers=p.num_layers,
                hidden_size=p.hidden_size,
                num_heads=p.num_heads,
                vocab_size=p.vocab_size,
                rotary_pct=p.rotary_pct,
                intermediate_size=0,
            )
        return cls(**values)


def check_section(model: Any, seq_len: int, init_from: str = "") -> None:
    """The ``model`` section of a config: preset, sizes, rotary settings, T within the context,
    then the dataclass's own checks; one ``UserError``. Warns (once) when a continuation runs
    past its source model's context with the rotary settings unchanged."""
    if model.preset:
        checks.choice("model.preset", model.preset, PRESETS)
    else:
        for name in ("hidden_size", "num_layers", "num_heads", "vocab_size"):
            checks.positive(f"model.{name}", model[name])
        if model.hidden_size % model.num_heads:
            raise UserError(
                f"model.hidden_size {model.hidden_size} is not divisible by model.num_heads {model.num_heads}")
    checks.unit_interval("model.rotary_pct", model.rotary_pct)
    check_context(model, seq_len)
    PythiaConfig.from_config(model)
    checks.warn_once(rope_warning(model, seq_len, init_from))


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


# ---------------------------------------------------------------------------------------
# parameters


def init_params(config: PythiaConfig, key: jax.Array) -> Params:
    """Pythia's initialisation: ``small_init`` std sqrt(2/(5d)) for qkv, fc1 and both
    embeddings; ``wang_init`` std 2/(L sqrt(d)) for the attention output and fc2; zero biases,
    unit LayerNorm scales."""
    c = config
    d, L, F, V = c.hidden_size, c.num_layers, c.ffn_size, c.vocab_size
    dt = _dtype(c.param_dtype)
    small, wang = math.sqrt(2.0 / (5.0 * d)), 2.0 / (L * math.sqrt(d))
    k = iter(jax.random.split(key, 6))

    def normal(shape: tuple[int, ...], std: float) -> jax.Array:
        return (std * jax.random.normal(next(k), shape, jnp.float32)).astype(dt)

    def norm(*lead: int) -> Params:
        return {"scale": jnp.ones((*lead, d), dt), "bias": jnp.zeros((*lead, d), dt)}

    def dense(n_in: int, n_out: int, std: float, bias: bool = True) -> Params:
        p = {"kernel": normal((L, n_in, n_out), std)}
        if bias:
            p["bias"] = jnp.zeros((L, n_out), dt)
        return p

    return {
        "embed_in": normal((V, d), small),
        "layers": {
            "ln1": norm(L),
            "ln2": norm(L),
            "qkv": dense(d, 3 * d, small, c.attention_bias),
            "out": dense(d, d, wang, c.attention_bias),
            "fc1": dense(d, F, small),
            "fc2": dense(F, d, wang),
        },
        "final_ln": norm(),
        "embed_out": normal((V, d), small),
    }


def logical_axes(params: Params) -> Params:
    """Logical axis names for every leaf of a param tree (mapped to mesh axes by rules)."""
    names = {
        "embed_in": ("vocab", "embed"),
        "embed_out": ("vocab", "embed"),
        "final_ln": ("embed",),
        "ln1": ("layers", "embed"),
        "ln2": ("layers", "embed"),
        "qkv/kernel": ("layers", "embed", "heads"),
        "qkv/bias": ("layers", "heads"),
        "out/kernel": ("layers", "heads", "embed"),
        "out/bias": ("layers", "embed"),
        "fc1/kernel": ("layers", "embed", "mlp"),
        "fc1/bias": ("layers", "mlp"),
        "fc2/kernel": ("layers", "mlp", "embed"),
        "fc2/bias": ("layers", "embed"),
    }

    def lookup(path: tuple, leaf: Any) -> tuple[str, ...]:
        keys = tree_io.path_name(path).split("/")
        for name in ["/".join(keys[-2:]), *reversed(keys)]:
            if name in names:
                return names[name]
        raise KeyError(f"no logical axes for parameter {'/'.join(keys)}")

    return jax.tree_util.tree_map_with_path(lookup, params)


def count_params(model: PythiaConfig | Params) -> int:
    """Total parameters N of a config (from shapes only: ``jax.eval_shape``, nothing allocated)
    or of a params tree (arrays or ``ShapeDtypeStruct``s); every count in cpt-jax is this one."""
    if isinstance(model, PythiaConfig):
        model = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(model))


# ---------------------------------------------------------------------------------------
# forward


def layer_norm(x: jax.Array, p: Params, eps: float) -> jax.Array:
    """LayerNorm with weight and bias, computed in fp32, returned in ``x.dtype``."""
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + eps)
    return (h * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def _linear(x: jax.Array, p: Params) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x, p["kernel"].astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def attention_inputs(
    h: jax.Array, p: Params, cos: jax.Array, sin: jax.Array, c: PythiaConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotated ``q``, ``k`` and ``v`` ``[B, T, H, hd]`` of one layer for its LayerNormed input ``h``."""
    b, t, _ = h.shape
    qkv = _linear(h, p["qkv"]).reshape(b, t, c.num_heads, 3 * c.head_dim)
    q, k, v = (_heads(y) for y in jnp.split(qkv, 3, axis=-1))
    return attn_lib.apply_rotary(q, cos, sin), attn_lib.apply_rotary(k, cos, sin), v


def _mlp(x: jax.Array, p: Params, c: PythiaConfig) -> jax.Array:
    hidden = layout.constrain(_linear(x, p["fc1"]), "batch", "length", "mlp")
    return _residual(_linear(_ACTIVATIONS[c.hidden_act](hidden), p["fc2"]))


def _residual(x: jax.Array) -> jax.Array:
    """The residual stream ``[B, T, d]``: rows over the batch axes, the width replicated."""
    return layout.constrain(x, "batch", "length", "embed")


def _heads(x: jax.Array) -> jax.Array:
    """Per-head activations ``[B, T, H, hd]``: rows over the batch axes, heads over tensor."""
    return layout.constrain(x, "batch", "length", "heads", "head_dim")


def block_output(x: jax.Array, o: jax.Array, p: Params, c: PythiaConfig) -> jax.Array:
    """The layer's output for its input ``x`` and attention result ``o`` ``[B, T, H, hd]``:
    output projection, residual and MLP (parallel or sequential)."""
    b, t = o.shape[:2]
    a = _residual(_linear(_heads(o).reshape(b, t, c.hidden_size), p["out"]))
    if c.use_parallel_residual:
        return _residual(x + a + _mlp(layer_norm(x, p["ln2"], c.layer_norm_eps), p, c))
    x = _residual(x + a)
    return _residual(x + _mlp(layer_norm(x, p["ln2"], c.layer_norm_eps), p, c))


def _block(x: jax.Array, p: Params, cos: jax.Array, sin: jax.Array, c: PythiaConfig, impl: str) -> jax.Array:
    x = _residual(x)
    q, k, v = attention_inputs(layer_norm(x, p["ln1"], c.layer_norm_eps), p, cos, sin, c)
    o = attn_lib.causal_attention(q, k, v, impl, c.attention_chunk, c.attention_block_q,
                                  c.attention_block_kv)
    return block_output(x, o, p, c)


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def hidden_states(
    params: Params, tokens: jax.Array, config: PythiaConfig, positions: jax.Array | None = None
) -> jax.Array:
    """Final-LayerNorm output ``[B, T, d]`` in the compute dtype."""
    c = config
    cdt = _dtype(c.compute_dtype)
    t = tokens.shape[1]
    positions = jnp.arange(t) if positions is None else positions
    cos, sin = attn_lib.rotary_cos_sin(positions, c.rotary_dim, c.rotary_emb_base, c.rope_scaling)
    impl = attn_lib.resolve(c.attention, c.head_dim, cdt, t, c.attention_chunk)
    x = _residual(jnp.take(params["embed_in"], tokens, axis=0).astype(cdt))

    block = functools.partial(_block, cos=cos, sin=sin, c=c, impl=impl)
    if c.remat != "none":
        block = jax.checkpoint(block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    layers = params["layers"]
    one_layer = jax.tree.map(lambda names: names[1:], logical_axes({"layers": layers})["layers"],
                             is_leaf=lambda n: isinstance(n, tuple))
    if c.scan_layers:
        x, _ = jax.lax.scan(lambda h, p: (block(h, layout.constrain_params(p, one_layer)), None), x, layers)
    else:
        for i in range(c.num_layers):
            x = block(x, jax.tree.map(lambda a: a[i], layers))
    return layer_norm(x, params["final_ln"], c.layer_norm_eps)


def unembed(params: Params, h: jax.Array) -> jax.Array:
    """Logits ``h @ embed_out.T`` accumulated in fp32."""
    w = params["embed_out"].astype(h.dtype)
    logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
    if logits.ndim == 3:  # [B, T, V] or one vocab chunk of it: rows over batch, V over tensor
        logits = layout.constrain(logits, "batch", "length", "vocab")
    return logits


def forward(
    params: Params, tokens: jax.Array, config: PythiaConfig, positions: jax.Array | None = None
) -> jax.Array:
    """Logits ``[B, T, V]`` (fp32) for int token ids ``[B, T]``."""
    return unembed(params, hidden_states(params, tokens, config, positions))


# ---------------------------------------------------------------------------------------
# the NNX module


class _Group(nnx.Module):
    """A named group of parameters (mirrors one level of the param dict)."""

    def __init__(self, tree: Params):
        for name, value in tree.items():
            setattr(self, name, _Group(value) if isinstance(value, dict) else nnx.Param(value))


class Pythia(nnx.Module):
    """GPT-NeoX causal LM. ``Pythia(config, rngs=nnx.Rngs(0))`` initialises as Pythia did;
    ``Pythia(config, params=tree)`` wraps existing arrays. Call it on int ids ``[B, T]``."""

    def __init__(self, config: PythiaConfig, *, rngs: nnx.Rngs | None = None, params: Params | None = None):
        if params is None:
            if rngs is None:
                raise ValueError("Pythia needs rngs= (to initialise) or params= (to wrap)")
            params = init_params(config, rngs.params())
        self.config = config
        for name, value in params.items():
            setattr(self, name, _Group(value) if isinstance(value, dict) else nnx.Param(value))

    def params(self) -> Params:
        return pure_params(self)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        return forward(self.params(), jnp.asarray(tokens), self.config, positions)


def pure_params(model: nnx.Module) -> Params:
    """The model's parameters as a plain nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
