"""The ten Pythia sizes (Biderman et al. 2023) as model-shape presets.

Vocabulary rows are padded beyond the tokenizer's 50,277 ids: 50,304 for 14m-2.8b,
50,432 for 6.9b and 50,688 for 12b. Peak learning rates are Pythia's own.
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    num_layers: int  # L
    hidden_size: int  # d
    num_heads: int  # H
    vocab_size: int  # V (padded)
    rotary_pct: float
    peak_lr: float


PRESETS: dict[str, Preset] = {
    "14m": Preset(6, 128, 4, 50304, 0.25, 1e-3),
    "31m": Preset(6, 256, 8, 50304, 0.25, 1e-3),
    "70m": Preset(6, 512, 8, 50304, 0.25, 1e-3),
    "160m": Preset(12, 768, 12, 50304, 0.25, 6e-4),
    "410m": Preset(24, 1024, 16, 50304, 0.25, 3e-4),
    "1b": Preset(16, 2048, 8, 50304, 0.25, 2.5e-4),
    "1.4b": Preset(24, 2048, 16, 50304, 0.25, 2e-4),
    "2.8b": Preset(32, 2560, 32, 50304, 0.25, 1.6e-4),
    "6.9b": Preset(32, 4096, 32, 50432, 0.25, 1.2e-4),
    "12b": Preset(36, 5120, 40, 50688, 0.25, 1.2e-4),
}

# Pythia's tokenizer has 50,277 ids; rows from here to V - 1 are untrained padding.
TOKENIZER_VOCAB = 50277
