"""Training: the two-stage LLaVA-Phi recipe (`lphi-train`)."""
