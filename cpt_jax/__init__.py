"""cpt-jax: continual pretraining of Pythia (GPT-NeoX) language models in JAX/Flax."""

__version__ = "0.1.0"
