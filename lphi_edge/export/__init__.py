"""Export: the workflow above the Assistant that turns a checkpoint into a verified export directory —
export the vision-encoder / embedding / decoder ONNX parts, convert or quantize them, calibrate an int8
KV cache, verify against the PyTorch model, publish atomically; TensorRT engines are built on the target.

What an export directory *is* (manifest, engine layout, int8 KV arithmetic) lives one floor down, in the
torch-free `lphi_edge.format`, which the runtime reads; this package needs `lphi-edge[torch,export]`.
"""
