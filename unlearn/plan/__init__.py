"""Memory plans: what a run needs per GPU, worked out before any weight is loaded."""
