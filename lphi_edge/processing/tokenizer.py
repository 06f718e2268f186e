"""Tokenizer for the runtime: `tokenizer.json` through the `tokenizers` library (no transformers).

Prompts are tokenized like the original `tokenizer_image_token`: the text is split on `<image>`, each
chunk is tokenized on its own with no BOS, and IMAGE_TOKEN_INDEX marks where image features go.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from lphi_edge.errors import CheckpointError
from lphi_edge.processing.template import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

IMAGE_TOKEN_INDEX = -200
EOS_TEXT = "<|endoftext|>"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


# transformers' `clean_up_tokenization`, applied when tokenizer_config.json asks for it as Phi-2's does:
# transformers 4.36 (the original code base) applied it to every answer; transformers 5 skips it for
# BPE tokenizers unless forced, so it is reproduced here to give the original's text.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class Tokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with LLaVA's image-aware prompt tokenization.

    `clean_up_spaces` mirrors tokenizer_config.json's `clean_up_tokenization_spaces`.
    """

    def __init__(self, tok: HFTokenizer, eos_token: str = EOS_TEXT, clean_up_spaces: bool = False):
        self._tok = tok
        self.clean_up_spaces = clean_up_spaces
        eos_id = tok.token_to_id(eos_token)
        if eos_id is None:
            raise CheckpointError(f"tokenizer has no {eos_token!r} token: expected Phi-2's end-of-text token")
        self.eos_token = eos_token
        self.eos_token_id: int = eos_id

    @classmethod
    def from_file(cls, path: str | os.PathLike, clean_up_spaces: bool = False) -> Tokenizer:
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"cannot load tokenizer {path}: {e}") from None
        return cls(tok, clean_up_spaces=clean_up_spaces)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load `tokenizer.json`; a checkpoint with only slow files (vocab.json + merges.txt) is
        converted once with transformers and the result saved beside it (or in the user cache)."""
        path = Path(path)
        clean = bool(_read_json(path / "tokenizer_config.json").get("clean_up_tokenization_spaces", False))
        fast = path / "tokenizer.json"
        if fast.is_file():
            return cls.from_file(fast, clean)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return cls.from_file(convert_slow_tokenizer(path), clean)
        raise CheckpointError(
            f"no tokenizer in {path}: expected tokenizer.json (or vocab.json + merges.txt to convert)"
        )

    def __eq__(self, other: object) -> bool:
        """The same vocabulary, merges, normalisation and decoding (two engines of one model agree on every id)."""
        if not isinstance(other, Tokenizer):
            return NotImplemented
        same = self._tok.to_str() == other._tok.to_str()
        return same and (self.eos_token_id, self.clean_up_spaces) == (other.eos_token_id, other.clean_up_spaces)

    __hash__ = None  # mutable wrapper: compared, never used as a key

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text → ids, no BOS/EOS added (special tokens written in the text are recognised)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the (start, end) character span of each token in `text` (no special tokens added)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text

    def token_text(self, token_id: int) -> str:
        """One token as the vocabulary spells it (byte-level pieces included, e.g. 'Ġred'): for reports."""
        return self._tok.id_to_token(token_id) or f"<{token_id}>"

    @property
    def pending_patterns(self) -> tuple[str, ...]:
        """Strings whose completion changes already-decoded text (streaming holds their prefixes back)."""
        return tuple(old for old, _ in _CLEANUP) if self.clean_up_spaces else ()

    def encode_prompt(self, prompt: str) -> list[int]:
        """Split on `<image>`, tokenize each chunk separately, join with IMAGE_TOKEN_INDEX."""
        ids: list[int] = []
        for k, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            if chunk:
                ids.extend(self.encode(chunk))
        return ids


def convert_slow_tokenizer(path: Path) -> Path:
    """vocab.json + merges.txt (CodeGen/GPT-2 BPE) → tokenizer.json, once. Needs transformers."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckpointError(
            f"{path} has only slow tokenizer files; converting them needs transformers "
            "(pip install 'lphi-edge[torch]') or add a tokenizer.json"
        ) from None
    out_dir = path if os.access(path, os.W_OK) else _cache_dir_for(path)
    target = out_dir / "tokenizer.json"
    if target.is_file():
        return target
    logger.info("converting slow tokenizer in %s to %s (one time)", path, target)
    tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tok.backend_tokenizer.save(str(tmp))
    os.replace(tmp, target)
    return target


def _cache_dir_for(path: Path) -> Path:
    import hashlib

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lphi_edge" / "tokenizers"
    return root / key


def tokenizer_files(path: str | os.PathLike) -> list[Path]:
    """The tokenizer files present in a directory (to copy alongside a saved/exported model)."""
    return [Path(path) / f for f in TOKENIZER_FILES if (Path(path) / f).is_file()]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    return d if isinstance(d, dict) else {}
