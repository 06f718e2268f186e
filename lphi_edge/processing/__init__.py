"""Torch-free input processing: images (CLIP-exact), chat templates, tokenizer."""
