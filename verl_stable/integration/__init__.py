"""Plugin-only: every process-wide touch of verl and vLLM internals. Never copied into the upstream series."""
