"""Ahead-of-time compilation of the train step for accelerators this host does not have:
named slices and their chips (``topology``), and the compiled step's memory plan, FLOPs,
collectives and roofline (``plan``)."""
