"""Data steps: user-supplied files turned into verl's RL dataset schema, with the data_sources the rewards score."""
