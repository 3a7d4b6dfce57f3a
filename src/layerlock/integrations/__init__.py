"""Opt-in integrations of the :class:`~layerlock.unfreezer.Unfreezer` with training loops.

- :mod:`layerlock.integrations.loop`: a plain PyTorch loop (what the examples use).
- :mod:`layerlock.integrations.lightning`: ``LayerlockFinetuning``, a PyTorch Lightning
  callback (DDP-correct, resumable).
- :mod:`layerlock.integrations.hf_trainer`: ``LayerlockTrainerCallback`` and
  ``layerlock_optimizer`` for the Hugging Face ``Trainer``.

Nothing in the core imports these modules; each imports its framework itself.
"""
