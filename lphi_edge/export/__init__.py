"""Export: split LLaVA-Phi into vision-encoder / embedding / decoder ONNX parts, quantize, verify.

`lphi_edge.export.manifest` is torch-free (the runtime reads manifests); the exporter itself needs
`lphi-edge[torch,export]`.
"""
