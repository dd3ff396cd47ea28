"""The Hugging Face peer: ``GPTNeoXForCausalLM`` trained as a Pythia user would train it.

SDPA attention, fp32 master weights, bf16 autocast on GPU (fp32 on CPU), ``torch.compile`` of
the loss (model forward + fp32 cross-entropy), AdamW (fused on GPU) with GPT-NeoX's decay mask
(every weight matrix and both embeddings decay, biases and LayerNorms do not), global-norm
clipping, the learning rate set every step from our schedule. Lives only in the benchmarks.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from cpt_jax.model import hf
from cpt_jax.model.pythia import PythiaConfig


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(c: PythiaConfig, dev: torch.device, from_dir: str | Path | None = None,
                attn: str = "sdpa") -> GPTNeoXForCausalLM:
    """fp32 model on ``dev``: random HF init, or the weights of an ``hf.save`` directory."""
    if from_dir is not None:
        model = GPTNeoXForCausalLM.from_pretrained(str(from_dir), attn_implementation=attn,
                                                   dtype=torch.float32)
    else:
        cfg = GPTNeoXConfig(**hf.config_to_hf(c, "float32"))
        model = GPTNeoXForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    model.config.use_cache = False
    return model.to(dev).train()


def optimizer(model: torch.nn.Module, lr: float, b1: float, b2: float, eps: float,
              weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with two groups: ``ndim >= 2`` (matrices, embeddings) decay, the rest do not."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, fused=fused)


def make_step(model: GPTNeoXForCausalLM, opt: torch.optim.Optimizer, grad_clip: float,
              dev: torch.device, bf16: bool, compile_: bool) -> Callable[[np.ndarray, float], Any]:
    """``step(tokens [B, T+1] int, lr) -> (loss, grad_norm)`` as device tensors (no sync)."""
    params = [p for p in model.parameters()]

    def loss_fn(inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inp, use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())

    fn = torch.compile(loss_fn) if compile_ else loss_fn
    pin = dev.type == "cuda"

    def step(tokens: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.asarray(tokens, np.int64))
        t = t.pin_memory().to(dev, non_blocking=True) if pin else t
        loss = fn(t[:, :-1], t[:, 1:])
        loss.backward()
        norm = (torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0
                else torch.zeros((), device=dev))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), norm.detach()

    return step


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(dev: torch.device) -> tuple[int, str]:
    """(bytes, what): CUDA max allocated, or the process's peak RSS on CPU."""
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def release(dev: torch.device) -> None:
    """Free the peer's cached memory (the JAX side runs after it in the same process)."""
    import gc

    gc.collect()
    try:
        torch._dynamo.reset()
    except Exception:  # older torch: nothing to reset
        pass
    if dev.type == "cuda":
        torch.cuda.empty_cache()
