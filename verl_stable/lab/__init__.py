"""The CPU lab: the paper's comparisons as runs of verl's own trainer on a small MoE, with plots and a report.

``verl-stable lab`` / ``python -m verl_stable.lab`` (:mod:`verl_stable.lab.run`); the task is
:mod:`verl_stable.lab.task`, the model, cold starts and mismatch dial :mod:`verl_stable.lab.model`, the variant
table (the paper's cells of :mod:`verl_stable.grid`, scaled down) and the paper's claims as rows
:mod:`verl_stable.lab.variants`, the task/model seam :mod:`verl_stable.lab.setup`, series and summaries of verl's
metrics :mod:`verl_stable.lab.metrics`, the claims judged :mod:`verl_stable.lab.findings`, the figures
:mod:`verl_stable.lab.plots`, the Markdown report :mod:`verl_stable.lab.report`, the fast v1-trainer path
:mod:`verl_stable.lab.sampler`.
"""
