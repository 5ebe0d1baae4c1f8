"""The CPU lab: the paper's comparisons as runs of verl's own trainer on a small MoE, with plots and a report.

``verl-stable lab`` / ``python -m verl_stable.lab`` (:mod:`verl_stable.lab.run`); the task is
:mod:`verl_stable.lab.task`, the model, cold starts and mismatch dial :mod:`verl_stable.lab.model`, the variant
table :mod:`verl_stable.lab.variants`, the task/model seam :mod:`verl_stable.lab.setup`, plots and report
:mod:`verl_stable.lab.report`, the fast v1-trainer path :mod:`verl_stable.lab.sampler`.
"""
