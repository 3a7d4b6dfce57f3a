"""Opt-in integrations of the :class:`~layerlock.unfreezer.Unfreezer` with training loops.

- :mod:`layerlock.integrations.loop`: a plain PyTorch loop (what the examples use).

Nothing in the core imports these modules; each imports its framework itself.
"""
