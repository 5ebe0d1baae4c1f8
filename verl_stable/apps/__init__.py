"""Applications around verl's trainer: the console runner, the CPU demo, the recipes CLI, the first-node check.

The library (``verl_stable.routing``, ``verl_stable.cpu``, the losses) never imports from here."""
