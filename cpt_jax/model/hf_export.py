"""A complete Hugging Face folder: what ``save_pretrained`` and a tokenizer's ``save_pretrained`` write.

``write_folder(params, config, out, tokenizer_json)`` writes

- ``config.json`` (GPT-NeoX, bos/eos ids of the tokenizer) and ``generation_config.json``;
- ``model.safetensors``, or above ``max_shard_size`` the shards
  ``model-00001-of-0000N.safetensors`` with ``model.safetensors.index.json`` (transformers'
  names and index format);
- ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``, so
  ``AutoTokenizer`` / ``pipeline("text-generation")`` work on the folder with nothing copied in.

``find_tokenizer(source)`` says which tokenizer belongs with a checkpoint: the ``tokenizer.json``
inside it (a Hugging Face folder, a ``cpt-jax vocab extend`` output), or for a training run (or
one of its steps) the tokenizer its data dir was tokenized with, else that of its
``train.init_from``, followed back; Pythia's when the chain names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax import storage
from cpt_jax.data.tokenizer import PYTHIA_TOKENIZER_NAME, PYTHIA_TOKENIZER_SHA256, PYTHIA_VOCAB_SIZE, fetch_assets
from cpt_jax.errors import UserError
from cpt_jax.model import hf, weight_files
from cpt_jax.model.pythia import Params, PythiaConfig
from cpt_jax.run_dir import CHECKPOINTS, CONFIG

DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers 4.x save_pretrained's default
EOS_TOKEN = "<|endoftext|>"
PYTHIA = "pythia"  # find_tokenizer's answer when the chain ends at Pythia's own tokenizer
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_OUR_WEIGHTS = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")


# ---------------------------------------------------------------------------------------
# weights


def parse_size(text: str | int) -> int:
    """Bytes of ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a plain integer (transformers' spelling)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"shard size {text!r}: expected a positive size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def plan_shards(tensors: dict[str, np.ndarray], limit: int) -> list[list[str]]:
    """Tensor names per shard, in order; a shard closes before it would pass ``limit`` bytes
    (a tensor larger than ``limit`` gets a shard of its own, as in ``save_pretrained``)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += arr.nbytes
    return shards


def write_weights(out: Path, tensors: dict[str, np.ndarray], limit: int) -> list[str]:
    """``model.safetensors`` or shards + index under ``out``; returns the files written.
    Weight files of an earlier export in ``out`` are removed first."""
    for old in out.iterdir():
        if _OUR_WEIGHTS.match(old.name):
            old.unlink()
    shards = plan_shards(tensors, limit)
    if len(shards) == 1:
        weight_files.write_safetensors(out / "model.safetensors", tensors)
        return ["model.safetensors"]
    files, weight_map = [], {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        weight_files.write_safetensors(out / file, {n: tensors[n] for n in names})
        weight_map.update({n: file for n in names})
        files.append(file)
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files + ["model.safetensors.index.json"]


# ---------------------------------------------------------------------------------------
# tokenizer


def tokenizer_files(spec_text: str, model_max_length: int) -> tuple[dict[str, str], int]:
    """``({file name: text}, eos id)`` of the tokenizer files for a ``tokenizer.json`` text.
    EOS (= BOS = UNK, as in Pythia) is ``<|endoftext|>`` when the tokenizer has it, else id 0."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(spec_text)
    except Exception as err:  # the Rust library raises plain Exception
        raise UserError(f"not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
    eos_id = tok.token_to_id(EOS_TOKEN)
    eos_id = 0 if eos_id is None else eos_id
    eos = tok.id_to_token(eos_id)
    if eos is None:
        raise UserError("the tokenizer has no <|endoftext|> token and no id 0")
    special = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": int(model_max_length)}
    files = {"tokenizer.json": spec_text,
             "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
             "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}
    return files, eos_id


def _vocab_size(spec_text: str) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(spec_text).get_vocab_size(with_added_tokens=True)


def _read_text(p: Any) -> str | None:
    try:
        return p.read_text(encoding="utf-8") if p.is_file() else None
    except OSError:
        return None


def _manifest_tokenizer(data_dir: str) -> str | None:
    """The tokenizer a data dir's manifest names: its tokenizer.json text if that file is still
    there with the recorded sha256, ``PYTHIA`` for Pythia's, else None."""
    try:
        manifest = json.loads(_read_text(storage.path(data_dir) / "manifest.json") or "null")
        tok = manifest["tokenizer"]
        name, sha = str(tok["name"]), str(tok["sha256"])
    except (TypeError, KeyError, ValueError, UserError):
        return None
    if name == PYTHIA_TOKENIZER_NAME or sha == PYTHIA_TOKENIZER_SHA256:
        return PYTHIA
    try:
        raw = Path(name).read_bytes() if name else None
    except OSError:
        return None
    if raw is not None and hashlib.sha256(raw).hexdigest() == sha:
        return raw.decode("utf-8")
    return None


def find_tokenizer(source: str, depth: int = 8) -> str | None:
    """The ``tokenizer.json`` text that belongs with ``source`` (see the module docstring),
    ``PYTHIA`` for Pythia's own, or None when nothing says."""
    path = storage.path(source)
    text = _read_text(path / "tokenizer.json")
    if text is not None or depth <= 0:
        return text
    root = path.parent.parent if path.parent.name == CHECKPOINTS else path
    try:
        run_cfg = json.loads(_read_text(root / CONFIG) or "null")
    except ValueError:
        return None
    if not isinstance(run_cfg, dict) or not isinstance(run_cfg.get("train"), dict):
        return None  # not a training run (a Hugging Face config.json, or none)
    data = run_cfg.get("data") or {}
    if data.get("source") == "tokenized" and data.get("dir"):
        found = _manifest_tokenizer(data["dir"])
        if found is not None:
            return found
    parent = run_cfg["train"].get("init_from")
    return find_tokenizer(parent, depth - 1) if parent else None


def resolve_tokenizer(source: str, explicit: str | None, vocab_size: int,
                      log: Any = None) -> str | None:
    """The tokenizer.json text to export: ``explicit`` (a file or a folder holding one), else
    ``find_tokenizer(source)``, else Pythia's when the model has at least its 50,277 rows.
    None (with a line saying so) when no tokenizer fits."""
    log = log or (lambda line: print(line, file=sys.stderr))
    if explicit:
        p = Path(explicit).expanduser()
        p = p / "tokenizer.json" if p.is_dir() else p
        text = _read_text(p)
        if text is None:
            raise UserError(f"--tokenizer {explicit}: no tokenizer.json there")
    else:
        text = find_tokenizer(source)
        if text is None and vocab_size < PYTHIA_VOCAB_SIZE:
            log(f"note: no tokenizer found for {source} and the model's {vocab_size} rows are fewer "
                f"than Pythia's {PYTHIA_VOCAB_SIZE} ids: no tokenizer written (pass --tokenizer)")
            return None
    if text is None or text == PYTHIA:
        text = fetch_assets(log=log).tokenizer.read_text(encoding="utf-8")
    n = _vocab_size(text)
    if n > vocab_size:
        raise UserError(f"the tokenizer has {n} ids but the model only {vocab_size} embedding rows")
    return text


def checkpoint_tokenizer(source: str, explicit: str | None, vocab_size: int) -> Any:
    """The ``tokenizers.Tokenizer`` that belongs with a checkpoint: ``explicit``, else what
    :func:`resolve_tokenizer` finds; one ``UserError`` when there is none."""
    from tokenizers import Tokenizer

    text = resolve_tokenizer(source, explicit, vocab_size)
    if text is None:
        raise UserError(f"no tokenizer found for {source} (pass --tokenizer)")
    return Tokenizer.from_str(text)


def eos_id(tokenizer: Any) -> int:
    """The end-of-text id: ``<|endoftext|>`` where the tokenizer has it, else 0 (as in Pythia)."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    return 0 if eos is None else eos


# ---------------------------------------------------------------------------------------
# the folder


def write_folder(params: Params, config: PythiaConfig, out: str | Path, tokenizer_json: str | None,
                 max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Write a Hugging Face GPT-NeoX folder (weights in the params' own dtype); returns the
    file names written."""
    tensors = hf.to_hf_tensors(params, config)
    dtypes = {a.dtype for a in tensors.values()}
    if len(dtypes) != 1:
        raise UserError(f"params mix dtypes {sorted(str(d) for d in dtypes)}; cast them to one")
    dtype = np.dtype(dtypes.pop()).name
    limit = parse_size(max_shard_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_weights(out, tensors, limit)
    files: dict[str, str] = {}
    eos_id = 0
    if tokenizer_json is not None:
        files, eos_id = tokenizer_files(tokenizer_json, config.max_position_embeddings)
    hf_cfg = hf.config_to_hf(dataclasses.replace(config, param_dtype=dtype), dtype)
    hf_cfg.update(bos_token_id=eos_id, eos_token_id=eos_id)
    files["config.json"] = json.dumps(hf_cfg, indent=2) + "\n"
    files["generation_config.json"] = json.dumps(
        {"bos_token_id": eos_id, "eos_token_id": eos_id}, indent=2) + "\n"
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return written + sorted(files)
