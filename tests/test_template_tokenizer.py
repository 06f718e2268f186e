"""conv_phi_v0 rendering and LLaVA's image-aware tokenization, exactly as the original."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer as HFTokenizer

from lphi_edge.errors import CheckpointError, ConfigError, PromptError
from lphi_edge.processing.template import get_template
from lphi_edge.processing.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer

from reference import SYSTEM, phi_v0_prompt

T = get_template("phi_v0")


def test_single_turn_prompt_exact():
    assert T.prompt([("What is this?", None)]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT:"
    )


def test_multi_turn_prompt_exact():
    turns = [("What is this?", "A cup."), ("What colour?", "Red."), ("Where?", None)]
    expected = (
        SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cup.<|endoftext|>"
        "USER: What colour? ASSISTANT: Red.<|endoftext|>USER: Where? ASSISTANT:"
    )
    assert T.prompt(turns) == expected == phi_v0_prompt(turns)


def test_text_only_and_plain():
    assert T.prompt([("Hi", None)], image=False) == SYSTEM + " USER: Hi ASSISTANT:"
    plain = get_template("plain")
    assert plain.prompt([("ignored", None)]) == "<image>"
    assert plain.prompt([("ignored", "a red circle")]) == "<image>a red circle\n"


@pytest.mark.parametrize("bad", ["", "   \n", "look at <image> here"])
def test_bad_prompts(bad):
    with pytest.raises(PromptError):
        T.prompt([(bad, None)])


def test_unknown_template():
    with pytest.raises(ConfigError, match="phi_v0"):
        get_template("vicuna")


def test_image_chunks_tokenized_separately_without_bos(tiny_ckpt):
    tok = Tokenizer.from_dir(tiny_ckpt)
    raw = HFTokenizer.from_file(str(tiny_ckpt / "tokenizer.json"))
    prompt = T.prompt([("What shape is in the image?", None)])
    ids = tok.encode_prompt(prompt)
    before, after = prompt.split("<image>")
    assert (
        ids
        == raw.encode(before, add_special_tokens=False).ids
        + [IMAGE_TOKEN_INDEX]
        + raw.encode(after, add_special_tokens=False).ids
    )
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    # <|endoftext|> inside a prompt is the special eos token
    two = tok.encode_prompt(T.prompt([("a", "b"), ("c", None)]))
    assert tok.eos_token_id in two


def test_slow_tokenizer_files_are_converted_once(tiny_ckpt, tmp_path):
    raw = HFTokenizer.from_file(str(tiny_ckpt / "tokenizer.json"))
    slow = tmp_path / "slow"
    slow.mkdir()
    raw.model.save(str(slow))  # vocab.json + merges.txt only
    (slow / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "eos_token": "<|endoftext|>",
                "add_prefix_space": False,
                "added_tokens_decoder": {
                    str(raw.token_to_id("<|endoftext|>")): {
                        "content": "<|endoftext|>",
                        "special": True,
                        "lstrip": False,
                        "rstrip": False,
                        "normalized": False,
                        "single_word": False,
                    }
                },
            }
        )
    )
    assert not (slow / "tokenizer.json").exists()
    tok = Tokenizer.from_dir(slow)
    assert (slow / "tokenizer.json").is_file()  # converted once, reused next time
    text = T.prompt([("Is there a red square? naïve café", "yes")])
    assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids
    mtime = (slow / "tokenizer.json").stat().st_mtime_ns
    Tokenizer.from_dir(slow)
    assert (slow / "tokenizer.json").stat().st_mtime_ns == mtime


def test_missing_tokenizer(tiny_ckpt, tmp_path):
    d = tmp_path / "none"
    d.mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        Tokenizer.from_dir(d)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        Tokenizer.from_dir(bad)


def with_clean_up(ckpt, tmp_path):
    """A copy of `ckpt` whose tokenizer_config.json sets clean_up_tokenization_spaces, as Phi-2's does."""
    d = tmp_path / "clean"
    shutil.copytree(ckpt, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["clean_up_tokenization_spaces"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_clean_up_tokenization_spaces_like_transformers(tiny_ckpt, tmp_path):
    """Phi-2's tokenizer_config asks for clean-up, which transformers 4.36 (the original code base) applied.
    transformers 5 skips it for BPE unless forced; forced, it is the same function."""
    from transformers import PreTrainedTokenizerFast

    d = with_clean_up(tiny_ckpt, tmp_path)
    ours = Tokenizer.from_dir(d)
    hf = PreTrainedTokenizerFast.from_pretrained(
        str(d), clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True
    )
    text = "I do n't know . Is it red ? yes , it 's the robot ' s cup !"
    ids = ours.encode(text)
    assert (
        ours.decode(ids)
        == hf.decode(ids, skip_special_tokens=True)
        == "I don't know. Is it red? yes, it's the robot's cup!"
    )
    assert Tokenizer.from_dir(tiny_ckpt).decode(ids) == text  # off unless configured


def test_stream_never_rewrites_released_text_under_clean_up(tiny_ckpt, tmp_path):
    from lphi_edge.runtime.generation import TextStream

    d = with_clean_up(tiny_ckpt, tmp_path)
    tok = Tokenizer.from_dir(d)
    ids = tok.encode("I do n't know . Is it ? yes")
    s = TextStream(tok, stop=())
    released = "".join(s.update(ids[: k + 1]) for k in range(len(ids)))
    last, final = s.finish(ids)
    assert released + last == final == "I don't know. Is it? yes"
