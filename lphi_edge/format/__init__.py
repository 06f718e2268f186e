"""What an export directory is, for everyone who writes or reads one: the typed manifest, the TensorRT
engine-directory layout, the int8 KV-cache arithmetic, and where the shipped models live.

This is the floor below both the runtime (which reads exports) and the exporter (which writes them), so
neither reaches into the other. Imports neither torch, transformers nor onnx.
"""
