"""What the reproduction parts share: the context they run in, running an experiment file,
reading results back, mean ± sd over seeds, and the ``Section`` each returns (the verdict rule
is :mod:`experiments.repro.stats`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax import experiment
from cpt_jax.errors import UserError
from cpt_jax.run_dir import RunDir
from experiments.repro import settings
from experiments.repro.stats import VERDICTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SECTION_FILE = "section.json"


@dataclass
class Context:
    """Where a reproduction reads data and writes runs and plots, and at which size."""

    data_dir: str
    runs: Path  # runs/repro: one folder per part, plus pretrain/
    images: Path  # where the parts' PNGs go (docs/images)
    size: str = "full"
    log: Callable[[str], None] = print

    def part_dir(self, part: str) -> Path:
        return self.runs / part

    def config_file(self, name: str) -> str:
        """``configs/repro_<name>.py:<size>``, the experiment file of a part."""
        path = CONFIGS / f"repro_{name}.py"
        if not path.is_file():
            raise UserError(f"{path} not found: run `cpt-jax reproduce` from a cpt-jax checkout")
        return f"{path}:{self.size}"

    def module(self, name: str) -> Any:
        """The Python module of ``configs/repro_<name>.py`` (its constants: seeds, arms)."""
        return config_lib.load_module(self.config_file(name))

    def overrides(self, run_dir: Path | str, extra: Sequence[str] = ()) -> list[str]:
        """Run dir, data dir and the vocabulary rows of the data's tokenizer, then ``extra``
        (``KEY=VALUE`` items), as ``--config.KEY=VALUE`` overrides."""
        items = [f"run_dir={run_dir}", f"data.dir={self.data_dir}",
                 f"model.vocab_size={settings.vocab_rows(self.data_dir)}", *extra]
        return [f"--config.{item}" for item in items]

    def load(self, name: str, run_dir: Path | str | None = None, extra: Sequence[str] = ()) -> Any:
        """The config of ``configs/repro_<name>.py`` with this context's overrides."""
        return configure.load(self.config_file(name), self.overrides(run_dir or self.part_dir(name), extra))

    def experiment(self, name: str, extra: Sequence[str] = (), only: Iterable[str] | None = None,
                   run_dir: Path | str | None = None) -> tuple[Any, list[dict], dict[str, dict]]:
        """Run (or skip, when finished) the runs of ``configs/repro_<name>.py``; ``only`` keeps
        the named runs (and nothing else). Returns the shared config, the runs and their summaries."""
        shared, runs = experiment.load_experiment(
            self.config_file(name), self.overrides(run_dir or self.part_dir(name), extra))
        if only is not None:
            keep = set(only)
            runs = [r for r in runs if r["name"] in keep]
        summaries = experiment.run_experiment(shared, runs, log=self.log)
        return shared, runs, summaries

    def pretrained(self, which: str = "cosine") -> str:
        """The run dir of a shared pretraining run of ``configs/repro_pretrain.py`` (trained
        the first time a part asks for it)."""
        self.experiment("pretrain", only=[which])
        return str(self.part_dir("pretrain") / which)

    def pretraining(self, detail: str) -> str:
        """"The shared pretraining (`cosine`, S steps DETAIL)": how a continuation's setting starts."""
        return f"The shared pretraining (`cosine`, {int(self.load('pretrain').train.steps)} steps {detail})"

    def image(self, part: str, name: str) -> Path:
        self.images.mkdir(parents=True, exist_ok=True)
        return self.images / f"repro_{part}_{name}.png"


@dataclass
class Section:
    """One claim's result: what the paper says, what was run here, the numbers and the verdict."""

    part: str
    title: str
    claim: str  # the paper's finding, in one or two sentences
    source: str  # paper and table/figure
    setting: str  # what was run here
    table: str  # Markdown
    verdict: str  # one of VERDICTS
    why: str  # the numbers (and noise) that decide the verdict
    images: list[str] = field(default_factory=list)  # PNG paths
    numbers: dict[str, Any] = field(default_factory=dict)  # for the record (JSON)
    minutes: float = 0.0  # wall time of the part

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SECTION_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=_jsonable) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> "Section | None":
        path = folder / SECTION_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


@contextlib.contextmanager
def compilation_cache(folder: Path) -> Iterator[None]:
    """Keep every compiled step and eval under ``folder`` (jax's persistent cache) while the
    block runs, so the many runs of one shape compile once: about 15 s of a 20 s short run on
    2 CPU cores. A cache the user chose (``JAX_COMPILATION_CACHE_DIR``) is left as it is."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    options = {"jax_compilation_cache_dir": str(folder), "jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {k: jax.config.values[k] for k in options}
    for k, v in options.items():
        jax.config.update(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            jax.config.update(k, v)


def training_minutes(folder: Path) -> float:
    """Minutes the runs under ``folder`` took to train, from their summaries (``wall_time_s``):
    what a part cost when it ran, whichever later invocation only re-read its finished runs."""
    total = 0.0
    for path in folder.rglob("summary.json"):
        try:
            total += float(json.loads(path.read_text()).get("wall_time_s", 0.0))
        except (OSError, ValueError, AttributeError):
            continue
    return total / 60


def timed(fn: Callable[[], Section], folder: Path) -> Section:
    """Run a part; its minutes are this call's wall time, or when its runs had finished
    earlier (a re-run only reads them), their own training time."""
    t0 = time.time()
    section = fn()
    section.minutes = round(max((time.time() - t0) / 60, training_minutes(folder)), 1)
    return section


# ---- reading results ----------------------------------------------------------------------

def final_losses(run_dir: str | Path) -> dict[str, float]:
    """Held-out loss per domain at the end of a run (its summary's final eval)."""
    return experiment.domain_losses(experiment.read_summary(run_dir))


def eval_curve(run_dir: str | Path, key: str = "eval/avg/loss") -> dict[int, float]:
    """``{step: value}`` of every metrics record that logged ``key``."""
    return {int(r["step"]): float(r[key]) for r in RunDir(run_dir).read_metrics()
            if isinstance(r.get(key), (int, float))}


def group_curve(run_dir: str | Path, domains: Sequence[str], prefix: str = "eval") -> dict[int, float]:
    """Mean held-out loss over ``domains`` at each step where all of them were logged."""
    curves = [eval_curve(run_dir, f"{prefix}/{d}/loss") for d in domains]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {s: float(np.mean([c[s] for c in curves])) for s in steps}


def mean_loss(losses: dict[str, float], domains: Sequence[str]) -> float:
    return experiment.mean_loss(losses, list(domains))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def rewarm_text(shared: Any) -> str:
    """"peak LR X re-warmed from Y" of a continuation's config."""
    return f"peak LR {shared.optim.peak_lr:g} re-warmed from {shared.schedule.start_lr:g}"


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``mean +- sd (n = k)`` for several seeds, the plain value for one."""
    m, s = mean_sd(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


# ---- Markdown -----------------------------------------------------------------------------

def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if math.isfinite(x) else "n/a"
    return str(x)
