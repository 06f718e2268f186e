"""PyTorch LLaVA-Phi (reference backend, training, export source). Needs `lphi-edge[torch]`."""
