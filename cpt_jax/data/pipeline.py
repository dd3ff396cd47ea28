"""Training and evaluation batches: domains -> windows -> mixture -> ``{tokens, domain}``.

``TrainData.from_config(cfg, process_index, process_count).batch(k)`` is this process's rows of
global batch k, a pure function of (config, seed, k): the mixture plan gives every slot of batch k
a domain and a draw index j (``mixture.MixturePlan.layout``), and draw j of a domain reads window
``pi_{j // n}(j mod n)`` of that domain's stream (``sources.WindowSource``). Resuming therefore
needs only the step. Each process reads only the windows of the rows its devices hold
(``process_rows``: a contiguous share under data / fsdp parallelism, every row when the
``tensor`` axis spans processes). ``iterator(k)`` runs ``batch`` for k, k + 1, ... through grain
(``MapDataset.range(...).map(...)``, thread prefetch, optional worker processes).

A ``Catalog`` (one per run) says what the ``data`` section can read; ``TrainData`` and
``eval_sets(train, catalog)`` read from it. ``eval_sets`` gives each domain ``train.eval_batches``
fixed batches of ``train.batch_size`` windows spread evenly over its held-out ``val`` split
(synthetic data: a disjoint seed).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np

from cpt_jax import checks
from cpt_jax.checks import comma_list
from cpt_jax.data.manifest import domain_prefix, load_manifest, manifest_path
from cpt_jax.data.mixture import MixturePlan, parse_phases, parse_weights, replay_quota
from cpt_jax.data.sources import (
    SYNTHETIC_DOMAINS,
    FilteredStream,
    IndexedStream,
    SyntheticStream,
    WindowSource,
    derive_key,
)
from cpt_jax.errors import UserError
from cpt_jax.model.presets import PRESETS

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]
_FAR = 1 << 40  # "no end" for the grain step range


DataSource = Literal["synthetic", "tokenized"]
SOURCES: tuple[str, ...] = get_args(DataSource)


def check_section(data_cfg: Any) -> None:
    """The ``data`` section. ``data.dir`` means tokenized data: a config that sets it with the
    default synthetic source trains on ``data.dir`` (a silent synthetic run would be a wrong
    result), so the source is set to ``tokenized`` here."""
    if data_cfg.dir and data_cfg.source == "synthetic":
        with data_cfg.unlocked():
            data_cfg.source = "tokenized"
    checks.choice("data.source", data_cfg.source, SOURCES)
    checks.unit_interval("data.replay_fraction", data_cfg.replay_fraction, closed_top=False)
    for name in ("workers", "long_threshold"):
        checks.at_least_zero(f"data.{name}", data_cfg[name])
    checks.positive("data.prefetch", data_cfg.prefetch)
    checks.positive("data.synthetic_tokens", data_cfg.synthetic_tokens)
    checks.unit_interval("data.long_keep", data_cfg.long_keep)


def model_vocab(cfg: Any) -> int:
    """V of the configured model (a preset's padded vocabulary, else model.vocab_size)."""
    if cfg.model.preset:
        return PRESETS[cfg.model.preset].vocab_size
    return int(cfg.model.vocab_size)


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(comma_list(text)))  # each domain once


class Catalog:
    """What a ``data`` section can read: domain names, train token counts, and their streams.

    One per run: the training batches and the eval sets read the same catalog (the manifest of
    a tokenized ``data.dir`` is read once)."""

    def __init__(self, data: Any, seed: int, vocab: int, min_val_tokens: int = 0):
        """``vocab``: the model's V (token ids must stay below it); ``min_val_tokens``: the
        least a synthetic val split holds (enough for the eval batches)."""
        self.data, self.seed, self.vocab = data, int(seed), int(vocab)
        if data.source == "synthetic":
            self.where = "the synthetic source"
            self.available = list(SYNTHETIC_DOMAINS)
            self.val_tokens = max(data.synthetic_tokens // 16, int(min_val_tokens))
            self.tokens = {n: int(data.synthetic_tokens) for n in self.available}
        else:
            if not data.dir:
                raise UserError("data.source is 'tokenized' but data.dir is empty")
            self.manifest = load_manifest(data.dir)
            self.where = str(manifest_path(data.dir))
            self.available = list(self.manifest["domains"])
            self.tokens = {n: e["train_tokens"] for n, e in self.manifest["domains"].items()}
            tok = self.manifest["tokenizer"]
            if tok["vocab_size"] > self.vocab:
                raise UserError(
                    f"{self.where}: tokenizer {tok['name']} has {tok['vocab_size']} ids but the "
                    f"model's vocabulary has {self.vocab} (token ids >= {self.vocab} cannot be embedded)"
                )

    @classmethod
    def from_config(cls, cfg: Any) -> "Catalog":
        """The catalog of ``cfg.data`` for ``cfg.model``'s vocabulary and ``cfg.train``'s eval batches."""
        t = cfg.train
        return cls(cfg.data, cfg.seed, model_vocab(cfg), t.eval_batches * t.batch_size * t.seq_len + 1)

    def check(self, names: list[str], what: str) -> list[str]:
        """``names``, or a UserError naming the first one not available."""
        for name in names:
            if name not in self.available:
                raise UserError(
                    f"{what}: domain '{name}' not in {self.where} "
                    f"(available: {', '.join(self.available) or 'none'})"
                )
        return names

    def stream(self, name: str, split: str) -> Any:
        """The ``split`` ("train" | "val") token stream of domain ``name``."""
        if self.data.source == "synthetic":
            n = self.tokens[name] if split == "train" else self.val_tokens
            return SyntheticStream(name, n, self.vocab, derive_key(self.seed, "synthetic", name, split))

        return IndexedStream(domain_prefix(self.data.dir, self.manifest, name, split))


def domain_lists(data: Any, catalog: Catalog) -> tuple[list[str], list[str], list[str]]:
    """(all domains in id order, main-mixture members, replay members) of the ``data`` section.

    All = ``data.domains`` ("" = every available domain), then replay, upstream and downstream
    domains not already listed; ids index this list in batches, metrics and eval sets.
    """
    d = data
    main = catalog.check(_names(d.domains), "data.domains") or list(catalog.available)
    replay = catalog.check(_names(d.replay_domains), "data.replay_domains")
    extra = catalog.check(_names(d.upstream) + _names(d.downstream), "data.upstream/downstream")
    names = list(main)
    for name in replay + extra:
        if name not in names:
            names.append(name)
    return names, main, replay


def build_plan(data: Any, batch_size: int, seed: int, names: list[str], main: list[str],
               replay: list[str], tokens: dict) -> MixturePlan:
    """The mixture plan of the ``data`` section over ``names`` (see ``mixture``)."""
    d = data
    phases = [(s, spec, f"data.phases (step {s})") for s, spec in parse_phases(d.phases)]
    if not phases or phases[0][0] > 0:  # data.weights until the first phase
        phases = [(0, d.weights, "data.weights")] + phases
    weighted = [(s, parse_weights(spec, names, main, tokens, what)) for s, spec, what in phases]
    quota, replay_w = 0, None
    if d.replay_fraction > 0:
        if not replay:
            raise UserError("data.replay_fraction > 0 needs data.replay_domains")
        quota = replay_quota(d.replay_fraction, batch_size)
        replay_w = parse_weights(d.replay_weights, names, replay, tokens, "data.replay_weights")
    return MixturePlan(names, weighted, batch_size, seed, replay_w, quota)


class TrainData:
    """Deterministic, resumable training batches: the global rows ``rows`` (every row when None)
    of each batch of ``train.batch_size`` sequences of ``train.seq_len`` + 1 tokens, drawn
    from ``catalog`` by the mixture of its ``data`` section."""

    def __init__(self, train: Any, catalog: Catalog, rows: np.ndarray | None = None):
        d, seed = catalog.data, catalog.seed
        self.data_cfg, self.seed = d, seed
        self.seq_len, self.batch_size = int(train.seq_len), int(train.batch_size)
        self.rows = np.asarray(np.arange(self.batch_size) if rows is None else rows, np.int64)
        self.vocab, self.where = catalog.vocab, catalog.where
        self.tokens = {n: int(c) for n, c in catalog.tokens.items()}
        self.domains, self.main_domains, self.replay_domains = domain_lists(d, catalog)
        self.plan = build_plan(d, self.batch_size, seed, self.domains, self.main_domains,
                               self.replay_domains, catalog.tokens)
        self.sources = []
        for name in self.domains:
            stream = catalog.stream(name, "train")
            if d.long_threshold > 0 and name in self.main_domains:
                key = derive_key(seed, "long", name)
                stream = FilteredStream(stream, d.long_threshold, d.long_keep, key)
            self.sources.append(WindowSource(stream, self.seq_len, name, seed))
        used = np.max([self.plan.weights_at(s) for s in self.plan.starts], axis=0) > 0
        for i in np.flatnonzero(used):
            len(self.sources[i])  # every sampled domain must hold at least one window

    @classmethod
    def from_config(cls, cfg: Any, process_index: int = 0, process_count: int = 1,
                    rows: np.ndarray | None = None, catalog: Catalog | None = None) -> "TrainData":
        """The batches of ``cfg`` that process ``process_index`` of ``process_count`` loads
        (``process_rows``, unless ``rows`` says which), read from ``catalog`` when given."""
        if rows is None:
            rows = process_rows(cfg, process_index, process_count)
        return cls(cfg.train, catalog or Catalog.from_config(cfg), rows)

    def describe(self) -> str:
        """Where the batches come from, for the run's banner: ``tokenized DIR: web 1,204 tokens,
        code 9,876 tokens`` (synthetic data: the domain names)."""
        if self.data_cfg.source != "tokenized":
            return f"synthetic tokens: {', '.join(self.domains)}"
        listed = ", ".join(f"{n} {self.tokens[n]:,} tokens" for n in self.domains)
        return f"tokenized {self.data_cfg.dir}: {listed}"

    def weights_at(self, step: int) -> np.ndarray:
        """Expected share of each domain (id order) among the sequences of global batch ``step``."""
        return self.plan.weights_at(step)

    def epochs_at(self, step: int) -> np.ndarray:
        """Epochs of each domain's train windows consumed by global batches 0 .. step - 1
        (> 1: the run repeats data; domains without a usable window report 0)."""
        done = self.plan.draws_before(int(step)).astype(np.float64)
        n = np.array([len(s) if d > 0 else 1 for s, d in zip(self.sources, done)], np.float64)
        return done / n

    def batch(self, step: int) -> Batch:
        """This process's rows of global batch ``step``: tokens int32 [b, T+1], domain int32 [b]."""
        dom, draw = self.plan.layout(int(step))
        dom, draw = dom[self.rows], draw[self.rows]
        tokens = np.empty((len(dom), self.seq_len + 1), np.int32)
        for i in np.unique(dom):
            sel = dom == i
            tokens[sel] = self.sources[i].read(draw[sel])
        _check_ids(tokens, self.vocab, f"batch {step}")
        return {"tokens": tokens, "domain": dom.astype(np.int32)}

    def iterator(self, start_step: int = 0, stop_step: int | None = None) -> Iterator[Batch]:
        """Batches ``start_step, start_step + 1, ...`` (up to ``stop_step``), prefetched by grain.

        ``data.workers`` > 0 runs ``batch`` in that many worker processes (round-robin over
        steps, so the order is unchanged); otherwise in background threads of this process.
        """
        import grain

        stop = _FAR if stop_step is None else int(stop_step)
        if not 0 <= start_step <= stop:
            raise UserError(f"data iterator range [{start_step}, {stop}) is invalid")
        d = self.data_cfg
        ds = grain.MapDataset.range(int(start_step), stop).map(_BatchFn(self))
        if d.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's worker code reads absl flags
                flags.FLAGS.mark_as_parsed()
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=d.prefetch))
            it = it.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=d.workers, per_worker_buffer_size=d.prefetch),
                worker_init_fn=functools.partial(_die_with, os.getpid()),
            )
        else:
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=d.prefetch))
        return _plain(iter(it))

    def state(self, step: int) -> dict:
        """What a checkpoint stores to resume the data: the next step and the domain ids."""
        return {"step": int(step), "domains": list(self.domains), "batch_size": self.batch_size,
                "seq_len": self.seq_len, "seed": self.seed}

    def resume_step(self, state: dict) -> int:
        """The step to pass to ``iterator`` for a saved ``state``; refuses changed domain ids."""
        if list(state.get("domains", self.domains)) != self.domains:
            raise UserError(
                f"checkpoint data domains {state['domains']} differ from the config's {self.domains}"
            )
        return int(state["step"])


def process_rows(cfg: Any, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Global rows of each batch that process ``process_index`` of ``process_count`` loads.

    In a live multi-process run: the rows its devices hold under ``cfg.mesh``
    (``sharding.process_rows``; with a ``tensor`` axis across processes, all of them). Processes
    simulated inside one (tests, tools): equal contiguous shares, as an fsdp mesh gives."""
    b = int(cfg.train.batch_size)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is not in [0, {process_count})")
    if process_count == 1:
        return np.arange(b)
    import jax

    from cpt_jax import sharding

    if process_count == jax.process_count():
        return sharding.process_rows(sharding.make_mesh(cfg.mesh), b, process_index)
    if b % process_count:
        raise UserError(f"train.batch_size {b} is not divisible by the {process_count} processes")
    per = b // process_count
    return np.arange(process_index * per, (process_index + 1) * per)


def _die_with(trainer_pid: int, worker_index: int = 0, worker_count: int = 0) -> None:
    """In each grain worker: exit as soon as the training process is gone (killed with -9, it
    cannot stop its workers itself; whatever process started them, they must not outlive it)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(trainer_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid now belongs to another user's process
                os._exit(1)

    threading.Thread(target=watch, name="cpt-jax-die-with-trainer", daemon=True).start()


class _BatchFn:
    """Picklable ``step -> batch`` for grain (workers rebuild streams from small state)."""

    def __init__(self, data: TrainData):
        self.data = data

    def __call__(self, step: int) -> Batch:
        return self.data.batch(step)


def _plain(it: Iterator[Batch]) -> Iterator[Batch]:
    """Copy each batch out of grain's shared-memory arrays so none outlives its worker;
    closing this generator stops grain's threads and worker processes."""
    try:
        for batch in it:
            yield {k: np.array(v) for k, v in batch.items()}
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _check_ids(tokens: np.ndarray, vocab: int, where: str) -> None:
    if tokens.size and not 0 <= int(tokens.min()) <= int(tokens.max()) < vocab:
        raise UserError(
            f"{where}: token ids span {int(tokens.min())}..{int(tokens.max())}, outside the "
            f"model vocabulary [0, {vocab})"
        )


def eval_sets(train: Any, catalog: Catalog, domains: list[str] | None = None) -> dict[str, list[Batch]]:
    """``train.eval_batches`` fixed batches of ``train.batch_size`` windows of each domain's
    held-out ``val`` split (every domain of the catalog's ``data`` section, or ``domains``).

    Windows (T + 1 tokens, stride T) are taken at evenly spaced positions over the split; a split
    with fewer windows than wanted gives all it has (the last batch may be short); a domain with
    no window at all is left out with a warning. Domain ids follow ``TrainData.domains``.
    """
    names, _, _ = domain_lists(catalog.data, catalog)
    wanted = names if domains is None else catalog.check(list(domains), "eval domains")
    ids = {n: i for i, n in enumerate(names + [n for n in wanted if n not in names])}
    t = train
    out: dict[str, list[Batch]] = {}
    for name in wanted:
        source = WindowSource(catalog.stream(name, "val"), t.seq_len, name, catalog.seed)
        n = max(0, (source.stream.num_tokens - 1) // t.seq_len)
        if n == 0:
            log.warning("eval: domain '%s' has no val window of %d tokens; skipped", name, t.seq_len + 1)
            continue
        k = min(n, t.eval_batches * t.batch_size)
        windows = source.windows(np.arange(k, dtype=np.int64) * n // k)
        _check_ids(windows, catalog.vocab, f"val split of '{name}'")
        dom = np.full(k, ids[name], np.int32)
        out[name] = [
            {"tokens": windows[i : i + t.batch_size], "domain": dom[i : i + t.batch_size]}
            for i in range(0, k, t.batch_size)
        ]
    return out
