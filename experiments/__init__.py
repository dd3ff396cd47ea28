"""Experiments built on the cpt-jax library: code that runs from a checkout, not part of the
installed package (``cpt-jax reproduce`` puts the checkout on ``sys.path``)."""
