"""Real models the project can fetch and cache offline (SmolLM2-135M-Instruct)."""
