"""The CPU lab: a small MoE trained with RL on a verifiable task through verl's trainer, to compare variants."""
