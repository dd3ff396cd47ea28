"""lm-evaluation-harness over a cpt-jax model, in process (no export; torch is not needed).

``HarnessLM`` is an ``lm_eval`` ``TemplateLM``: the harness itself builds the requests of any
task (its own, or a user's YAML) and scores the answers; this class only computes what its
Hugging Face backend computes, with the same tokenisation and truncation:

- ``loglikelihood``: the harness's ``_encode_pair`` (inherited), then each
  ``(context, continuation)`` is scored by ``multiple_choice.score_pairs``: the last
  ``max_length + 1`` tokens, sorted into length buckets and batched, results in request order;
  ``is_greedy`` when every continuation token is the argmax.
- ``loglikelihood_rolling``: the harness's disjoint rolling windows of ``max_length`` tokens
  after the prefix token (EOS), summed per document.
- ``generate_until``: requests grouped by their generation arguments; contexts keep their last
  ``max_length - max_gen_toks`` tokens; ``generate.generate_ids`` decodes (greedy unless
  ``do_sample``), stops at EOS or when a stop string appears, and the text is cut at the first
  stop string.

``max_length`` is the model's ``max_position_embeddings``, as the harness reads it from a
Hugging Face ``config.json``. The class is registered with the harness as ``cpt-jax``:
``lm_eval.simple_evaluate(model="cpt-jax", model_args="checkpoint=PATH")`` after importing this
module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from cpt_jax import checks
from cpt_jax.errors import UserError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # the extra is not installed: say so where it is used
    TemplateLM, register_model = object, None

MISSING = "lm-evaluation-harness is not installed (pip install 'cpt-jax[harness]')"
LM_EVAL_ARGS = {"max_batch_size", "device"}  # what lm-eval passes every model; not used here


def require() -> None:
    """One ``UserError`` line naming the extra when lm-eval is missing."""
    if register_model is None:
        raise UserError(MISSING)


class HarnessLM(TemplateLM):  # type: ignore[misc, valid-type]
    """A cpt-jax checkpoint (or params + config + tokenizer already in memory) as an lm-eval model.
    ``tokenizer``: a ``tokenizers.Tokenizer`` or a path (default: the checkpoint's);
    ``dtype``: the compute dtype (default: the checkpoint's); ``seed``: for sampled generation."""

    def __init__(self, checkpoint: str | None = None, *, params: Any = None, config: Any = None,
                 tokenizer: Any = None, batch_size: int | str = 16, max_gen_toks: int = 256,
                 seed: int = 0, dtype: Any = None, **extra: Any) -> None:
        require()
        unknown = sorted(set(extra) - LM_EVAL_ARGS)
        if unknown:
            raise UserError(f"unknown cpt-jax model argument '{unknown[0]}' (checkpoint, tokenizer, batch_size, "
                            "max_gen_toks, seed, dtype)")
        super().__init__()
        from cpt_jax import generate as gen
        from cpt_jax.model.hf_export import checkpoint_tokenizer, eos_id
        from cpt_jax.eval.multiple_choice import on_device
        from cpt_jax.model import checkpoint as ckpt_lib

        if params is None:
            if checkpoint is None:
                raise UserError("HarnessLM needs checkpoint= or params= and config=")
            params, config = ckpt_lib.load_params(checkpoint)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = checkpoint_tokenizer(checkpoint or "", tokenizer, config.vocab_size)
        self.params, self.tokenizer = on_device(params), tokenizer
        self.config = gen.with_compute_dtype(config, dtype)
        self.batch_size = 16 if batch_size in ("auto", None) else int(batch_size)
        checks.positive("batch_size", self.batch_size)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        self._eot = eos_id(tokenizer)

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._eot

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **_: Any) -> list:
        from cpt_jax.eval.multiple_choice import score_pairs

        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        lls, greedy = score_pairs(self.params, self.config, pairs, self.batch_size, self.max_length)
        out = [(float(ll), bool(g)) for ll, g in zip(lls, greedy)]
        for (key, _, _), answer in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        windows, owner = [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from cpt_jax import generate as gen

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            eos = self.tokenizer.decode([self._eot], skip_special_tokens=False)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if max_gen >= self.max_length:
                raise UserError(f"max_gen_toks {max_gen} leaves no room for a context in {self.max_length} tokens")
            sampling = gen.Sampling(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                    int(kwargs.get("top_k") or 0), float(kwargs.get("top_p") or 1.0))
            keep = self.max_length - max_gen
            prompts = [(self.tok_encode(requests[i].args[0]) or [self.prefix_token_id])[-keep:] for i in members]
            stops = [s for s in until if s]
            hit = lambda j, ids: any(s in self.tok_decode(ids) for s in stops)
            new = gen.generate_ids(self.params, self.config, prompts, max_gen, sampling, self.seed, self._eot,
                                   self.batch_size, hit)
            for i, ids in zip(members, new):
                out[i] = gen.cut_at_stop(self.tok_decode(ids), until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


if register_model is not None:
    register_model("cpt-jax")(HarnessLM)


def check_section(eval_cfg: Any) -> None:
    """The ``eval`` section's harness keys: ``eval.harness_tasks`` needs lm-eval installed and
    names at least one task."""
    if eval_cfg.harness_tasks:
        require()
        parse_tasks(eval_cfg.harness_tasks)


def parse_tasks(text: str) -> list[str]:
    """Comma-separated harness task (or group) names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("no harness tasks named")
    return names


def task_manager(tasks: Sequence[str], include: str | None = None) -> Any:
    """lm-eval's ``TaskManager`` (with the user's YAML folder ``include``), after checking that
    it knows every task."""
    require()
    from lm_eval.tasks import TaskManager

    if include:  # the user's own folder alone when it holds every task (indexing lm-eval's takes seconds)
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(t in set(manager.all_tasks) for t in tasks):
            return manager
    manager = TaskManager(include_path=include) if include else TaskManager()
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        where = f" (nor in {include})" if include else " (give --harness-include DIR for your own YAML tasks)"
        raise UserError(f"unknown harness task '{unknown[0]}'{where}")
    return manager


def evaluate(lm: Any, tasks: Sequence[str], include: str | None = None, limit: int | None = None,
             num_fewshot: int | None = None, log_samples: bool = False, manager: Any = None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` over ``lm``: its whole result dict (``results``,
    ``configs``, ``versions``, ...). ``include`` is a folder of the user's YAML tasks."""
    import lm_eval

    manager = manager or task_manager(tasks, include)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None,
                                  num_fewshot=num_fewshot, log_samples=log_samples,
                                  torch_random_seed=None)  # the model is JAX: torch need not load
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def metrics(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from a harness result: numbers only, the ``,none`` filter
    suffix dropped (``acc,none`` -> ``acc``; other filters keep theirs, ``exact_match,strict``)."""
    out: dict[str, dict[str, float]] = {}
    for task, values in res.get("results", {}).items():
        row = {}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "," in key:
                name, flt = key.split(",", 1)
                row[name if flt == "none" else f"{name},{flt}"] = float(value)
        out[task] = row
    return out


def write_results(path: str, res: dict[str, Any]) -> None:
    """lm-eval's results JSON (its result dict without per-sample logs), as its own
    ``EvaluationTracker`` writes it."""
    from lm_eval.utils import handle_non_serializable

    from cpt_jax import storage

    body = {k: v for k, v in res.items() if k != "samples"}
    storage.write_text(path, json.dumps(body, indent=2, default=handle_non_serializable, ensure_ascii=False))


def to_metrics(found: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"harness/<task>/<metric>": value}`` (a filter other than ``none`` as one more level)."""
    return {f"harness/{task}/{metric.replace(',', '/')}": v for task, row in found.items() for metric, v in row.items()}


class TrainingEval:
    """``eval.harness_tasks`` at the training eval cadence, on the live (maybe sharded) params;
    the tokenizer and the task list are checked once, before the first step."""

    def __init__(self, eval_cfg: Any, model_config: Any, run_root: Any) -> None:
        import jax

        from cpt_jax.model.hf_export import checkpoint_tokenizer

        if jax.process_count() > 1:
            raise UserError("eval.harness_tasks runs in a single process; evaluate the checkpoints "
                            "of a multi-host run with cpt-jax eval --harness")
        self.tasks = parse_tasks(eval_cfg.harness_tasks)
        self.include = eval_cfg.harness_include or None
        self.manager = task_manager(self.tasks, self.include)
        self.limit, self.batch_size, self.config = eval_cfg.limit or None, eval_cfg.batch_size, model_config
        self.tokenizer = checkpoint_tokenizer(str(run_root), eval_cfg.harness_tokenizer or None,
                                            model_config.vocab_size)

    def __call__(self, params: Any) -> dict[str, float]:
        lm = HarnessLM(params=params, config=self.config, tokenizer=self.tokenizer, batch_size=self.batch_size)
        return to_metrics(metrics(evaluate(lm, self.tasks, limit=self.limit, manager=self.manager)))
