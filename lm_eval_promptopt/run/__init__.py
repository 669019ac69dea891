"""What one run keeps and writes: the run log and its stop conditions, the instruction cache,
process groups, the run folder and the transfer of given instructions."""
