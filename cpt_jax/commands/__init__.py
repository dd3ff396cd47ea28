"""One module per `cpt-jax` verb; see `cpt_jax.cli`."""
