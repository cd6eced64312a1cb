"""``bevialm export``: nanoGPT's names and layouts, safetensors written with NumPy alone (checked
against the safetensors library's reader), the sidecar, and the refusals, through the real
command line. The logits comparison in PyTorch is tests/test_export_torch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from bevialm import checkpoint, export, model
from bevialm.data import Vocab
from bevialm.model import ModelConfig

BEVIALM = [sys.executable, "-m", "bevialm"]
CFG = ModelConfig(vocab_size=11, ctx=8, dim=12, n_layers=2, n_heads=3, mlp_hidden=20, activation="gelu")


def write_checkpoint(path: Path, cfg: ModelConfig = CFG, dtype: type = np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    params = model.init_params(cfg, np.random.default_rng(seed), np.dtype(dtype))
    # Non-zero biases and gains, so a wrong mapping of any of them shows.
    params = {k: v + np.random.default_rng(seed + 1).normal(0, 0.1, v.shape).astype(dtype) for k, v in params.items()}
    vocab = Vocab(tuple("abcdefghijk"[: cfg.vocab_size]))
    header = checkpoint.make_header(model_config=asdict(cfg), tokenizer=vocab, step=7, train_config={})
    checkpoint.save_checkpoint(str(path), params=params, header=header)
    return params


def test_names_shapes_and_layouts_are_nanogpts() -> None:
    params = model.init_params(CFG, np.random.default_rng(0))
    state = export.nanogpt_state(params, CFG)
    c, h, v = CFG.dim, CFG.mlp_hidden, CFG.vocab_size
    assert state["transformer.wte.weight"].shape == (v, c)
    assert state["transformer.wpe.weight"].shape == (CFG.ctx, c)
    assert state["transformer.h.1.attn.c_attn.weight"].shape == (3 * c, c)  # (out, in), q|k|v
    assert state["transformer.h.1.mlp.c_fc.weight"].shape == (h, c)
    assert state["transformer.h.1.mlp.c_proj.weight"].shape == (c, h)
    assert state["lm_head.weight"].shape == (v, c)
    # q rows first, then k, then v: the key block is block1's Wk transposed.
    np.testing.assert_array_equal(state["transformer.h.1.attn.c_attn.weight"][c : 2 * c], params["block1.attn.k.W"].T)
    np.testing.assert_array_equal(state["transformer.h.1.attn.c_attn.bias"][2 * c :], params["block1.attn.v.b"])
    assert sum(a.size for a in state.values()) == model.count_params(CFG)  # every parameter, once
    assert all(a.flags.c_contiguous for a in state.values())


def test_safetensors_round_trip_with_our_reader(tmp_path: Path) -> None:
    params = write_checkpoint(tmp_path / "c.npz", dtype=np.float64)
    export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.safetensors"))
    tensors, meta = export.read_safetensors(str(tmp_path / "m.safetensors"))
    assert tensors["transformer.h.0.ln_1.weight"].dtype == np.float64
    np.testing.assert_array_equal(tensors["lm_head.weight"], params["lm_head.W"].T)
    assert json.loads(meta["config"])["n_head"] == 3
    raw = (tmp_path / "m.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0  # the tensors start 8-byte aligned
    assert len(raw) == 8 + n + sum(a.nbytes for a in tensors.values())  # no gaps, nothing trailing


def test_the_safetensors_library_reads_what_numpy_wrote(tmp_path: Path) -> None:
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file
    except ImportError:
        print("skipped: the safetensors library is not installed (pip install safetensors; it is in the dev extra)")
        pytest.skip("the safetensors library is not installed (pip install safetensors)")
    params = write_checkpoint(tmp_path / "c.npz")
    export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.safetensors"))
    theirs = load_file(str(tmp_path / "m.safetensors"))
    ours = export.nanogpt_state(params, CFG)
    assert set(theirs) == set(ours)
    for name, array in ours.items():
        assert theirs[name].dtype == array.dtype
        np.testing.assert_array_equal(theirs[name], array)
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        assert f.metadata()["format"] == "nanogpt"


def test_the_sidecar_holds_config_tokenizer_and_differences(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "c.npz")
    side, meta = export.export(str(tmp_path / "c.npz"), str(tmp_path / "out.safetensors"))
    assert side == str(tmp_path / "out.json")
    on_disk = json.loads(Path(side).read_text())
    assert on_disk == meta
    assert on_disk["config"] | {} == {
        "n_layer": 2, "n_head": 3, "n_embd": 12, "block_size": 8, "vocab_size": 11, "bias": True, "dropout": 0.0,
        "mlp_hidden": 20, "activation": "gelu_tanh", "ln_eps": 1e-5, "lm_head_bias": True, "tied_embeddings": False,
    }  # fmt: skip
    assert on_disk["tokenizer"] == {"type": "char", "chars": list("abcdefghijk")}
    assert on_disk["source"]["step"] == 7
    assert oct(os.stat(tmp_path / "out.safetensors").st_mode & 0o777) != oct(0o600)  # an ordinary file's mode


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_model_nanogpt_cannot_express_is_refused_in_one_line(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "c.npz", replace(CFG, ln_eps=1e-6))
    done = subprocess.run([*BEVIALM, "export", "--checkpoint", "c.npz", "--to", "m.safetensors"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "epsilon 1e-06; nanoGPT's LayerNorm fixes it at 1e-05" in _one_line(done)
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # nothing written


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--checkpoint", "missing.npz", "--to", "m.safetensors"], "missing.npz"),
        (["--checkpoint", "c.npz", "--to", "m.json"], "would be overwritten by its own JSON sidecar"),
        (["--checkpoint", "c.npz", "--to", "sub"], "is a folder"),
        (["--checkpoint", "c.npz", "--to", "nowhere/m.safetensors"], "nowhere"),
    ],
)
def test_bad_exports_get_one_line_and_keep_old_files(tmp_path: Path, flags: list[str], expected: str) -> None:
    write_checkpoint(tmp_path / "c.npz")
    (tmp_path / "sub").mkdir()
    (tmp_path / "m.json").write_text("old")
    done = subprocess.run([*BEVIALM, "export", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert expected in _one_line(done)
    assert (tmp_path / "m.json").read_text() == "old"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_format_torch_without_torch_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "c.npz")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(export.ExportError, match=r"--format torch needs PyTorch \(pip install torch\)"):
        export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.pt"), "torch")
    with pytest.raises(export.ExportError, match="--format must be one of"):
        export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.x"), "onnx")
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "c.npz", dtype=np.float64)

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_safetensors", broken)
    with pytest.raises(export.ExportError, match="No space left on device"):
        export.export(str(tmp_path / "c.npz"), str(tmp_path / "m.safetensors"))
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_unsupported_dtypes_and_absurd_headers_are_refused(tmp_path: Path) -> None:
    with open(tmp_path / "x", "wb") as f, pytest.raises(export.ExportError, match="dtype int32"):
        export._write_safetensors(f, {"a": np.zeros(2, np.int32)}, {})
    (tmp_path / "big").write_bytes((10**12).to_bytes(8, "little"))
    with pytest.raises(export.ExportError, match="not plausible"):
        export.read_safetensors(str(tmp_path / "big"))


def test_the_command_says_what_it_wrote(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "c.npz")
    done = subprocess.run([*BEVIALM, "export", "--checkpoint", "c.npz", "--to", "m.safetensors"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "wrote m.safetensors (safetensors, float32; nanoGPT names, 2 layer(s) x 3 head(s), dim 12) "
        "and m.json (config and tokenizer)\n"
    )


def test_export_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bevialm import cli

    write_checkpoint(tmp_path / "c.npz")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "c.npz"), "--to", str(tmp_path / "m.safetensors")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'm.safetensors'} (safetensors, float32;")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "c.npz"), "--to", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
