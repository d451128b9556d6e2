"""Online experiments: assignment, interleaving, analysis and the closed-loop audience."""
