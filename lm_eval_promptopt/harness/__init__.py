"""Everything that speaks to lm-eval: model and task set-up, prompt rendering and instruction
placement, the harness-scored objective, split plans and task-family facts."""
