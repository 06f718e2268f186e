"""Opening an export hashes each file once per machine: unchanged files are trusted from the record of
what was verified, and any change to a file — even one that keeps its size and modification time — is
hashed again and refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lphi_edge.errors import CheckpointError
from lphi_edge.format import manifest as manifest_module
from lphi_edge.format.hash_cache import VerifiedHashes
from lphi_edge.format.manifest import Manifest
from lphi_edge.format.shipped import SHIPPED_EXPORTS


@pytest.fixture
def export(tmp_path) -> Path:
    return Path(shutil.copytree(SHIPPED_EXPORTS["shapes-demo"], tmp_path / "export"))


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files sha256_file reads."""
    names: list[str] = []
    real = manifest_module.sha256_file

    def counting(path: Path, *args):
        names.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return names


def test_unchanged_files_are_hashed_once(export, hashed):
    files = sorted(Manifest.load(export).files)
    assert sorted(hashed) == files  # the first open hashes everything
    hashed.clear()
    Manifest.load(export)
    assert hashed == []  # the second trusts what this machine verified
    Manifest.load(export, rehash=True)
    assert sorted(hashed) == files  # lphi-verify's way: everything again


def test_a_change_that_keeps_size_and_mtime_is_still_refused(export, hashed):
    Manifest.load(export)
    victim = export / "decoder_model_merged.onnx.data"
    st = victim.stat()
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back; the ctime moves regardless
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    hashed.clear()
    with pytest.raises(CheckpointError, match=r"decoder_model_merged.onnx.data does not match its sha256"):
        Manifest.load(export)
    assert hashed == ["decoder_model_merged.onnx.data"]  # only the changed file was hashed again


def test_a_replaced_file_is_hashed_again(export, hashed):
    Manifest.load(export)
    victim = export / "tokenizer.json"
    copy = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(copy)  # same bytes, a new file: hashed, and accepted
    hashed.clear()
    Manifest.load(export)
    assert hashed == ["tokenizer.json"]


def test_an_unwritable_record_means_hashing_every_time(export, hashed, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # the cache root is a file: nothing can be recorded under it
    monkeypatch.setenv("LPHI_EDGE_CACHE", str(blocked))
    Manifest.load(export)
    first = len(hashed)
    Manifest.load(export)
    assert first > 0 and len(hashed) == 2 * first
    assert not VerifiedHashes(export).record.exists()
