"""Reward functions verl calls through ``reward.custom_reward_function`` (path ``pkg://verl_stable.rewards.<module>``).

Each module exposes ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`` and
``SUPPORTED_DATA_SOURCES`` (the data_sources it scores, or None for any), which the pre-start checks read.
"""
