"""Checkpoints: bit-exact round trip (params, moments, RNG stream), atomic writes,
and a one-line CheckpointError for every kind of damage or mismatch."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bevialm.checkpoint
import bevialm.data
from bevialm.checkpoint import (
    Checkpoint,
    CheckpointError,
    describe,
    load_checkpoint,
    make_header,
    restore_rng,
    save_checkpoint,
    validate_against,
)
from bevialm.data import Vocab
from bevialm.optim import AdamWConfig, AdamWState, init_state, step
from bevialm.types import Array

VOCAB = Vocab.from_text("hello, world!\n")
MODEL_CONFIG = {"vocab_size": VOCAB.size, "ctx": 4, "dim": 3, "layers": 1, "activation": "gelu"}
SHAPES = {
    "tok_emb.W": (VOCAB.size, 3),
    "pos_emb.W": (4, 3),
    "block0.attn.q.W": (3, 3),
    "block0.attn.q.b": (3,),
    "ln_f.gamma": (3,),
    "lm_head.W": (3, VOCAB.size),
}


def _params(seed: int = 0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _trained_state(params: dict[str, Array]) -> tuple[dict[str, Array], AdamWState]:
    state = init_state(params)
    for seed in (1, 2):
        params, state = step(params, _params(seed), state, AdamWConfig(lr=1e-2))
    return params, state


def _header(rng: np.random.Generator | None = None, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_config": MODEL_CONFIG,
        "tokenizer": VOCAB,
        "step": 2,
        "train_config": {"lr": 1e-3, "batch": 8, "data": "data.txt"},
        "rng": rng,
        "best_val_loss": 2.5,
        "extra": {"note": "ünïcode ok", "history": [1, 2]},
    }
    fields.update(overrides)
    return make_header(**fields)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, Array], AdamWState, np.random.Generator]:
    """A checkpoint after two AdamW steps with an advanced RNG, and what went into it."""
    params, state = _trained_state(_params())
    rng = np.random.default_rng(123)
    rng.standard_normal(17)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params=params, header=_header(rng), opt_state=state)
    return path, params, state, rng


# ---------------------------------------------------------------- round trip


def test_round_trip_is_bit_exact(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, params, state, rng = saved
    ckpt = load_checkpoint(path)
    assert ckpt.params.keys() == params.keys()
    assert ckpt.opt_state is not None and ckpt.opt_state.t == state.t == 2
    for k, p in params.items():
        for got, want in (
            (ckpt.params[k], p),
            (ckpt.opt_state.m[k], state.m[k]),
            (ckpt.opt_state.v[k], state.v[k]),
        ):
            assert got.dtype == want.dtype == np.float32
            assert got.tobytes() == want.tobytes()
    assert ckpt.step == 2
    assert ckpt.tokenizer == VOCAB
    assert ckpt.model_config == MODEL_CONFIG
    assert ckpt.train_config == {"lr": 1e-3, "batch": 8, "data": "data.txt"}
    assert ckpt.best_val_loss == 2.5
    assert ckpt.extra == {"note": "ünïcode ok", "history": [1, 2]}
    assert ckpt.header["format"] == "bevialm-checkpoint" and ckpt.header["version"] == 2
    assert ckpt.header["optimizer"] == {"name": "adamw", "t": 2}


def test_restored_rng_continues_the_stream(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, _, _, rng = saved
    state = load_checkpoint(path).rng_state
    assert state is not None
    resumed = restore_rng(state)
    np.testing.assert_array_equal(resumed.standard_normal(50), rng.standard_normal(50))
    np.testing.assert_array_equal(resumed.integers(0, 1000, size=20), rng.integers(0, 1000, size=20))


def test_resumed_training_continues_identically(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, params, state, _ = saved
    ckpt = load_checkpoint(path)
    assert ckpt.opt_state is not None
    grads = _params(9)
    want, want_state = step(params, grads, state, AdamWConfig(lr=1e-2))
    got, got_state = step(ckpt.params, grads, ckpt.opt_state, AdamWConfig(lr=1e-2))
    for k in want:
        assert got[k].tobytes() == want[k].tobytes()
        assert got_state.v[k].tobytes() == want_state.v[k].tobytes()


def test_round_trip_without_optimizer_state_or_rng(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"  # any name: nothing is appended
    params = {k: v.astype(np.float64) for k, v in _params().items()}
    save_checkpoint(path, params=params, header=_header(best_val_loss=None, train_config=None, extra=None))
    ckpt = load_checkpoint(str(path))
    assert ckpt.opt_state is None and ckpt.rng_state is None and ckpt.best_val_loss is None
    assert ckpt.train_config == {} and ckpt.extra == {}
    assert all(ckpt.params[k].dtype == np.float64 and (ckpt.params[k] == params[k]).all() for k in params)


def test_file_is_a_plain_npz_readable_without_pickle(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, params, _, _ = saved
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        header = json.loads(z["header"].tobytes().decode("utf-8"))
        assert z["header"].dtype == np.uint8
        assert z["param/block0.attn.q.W"].tobytes() == params["block0.attn.q.W"].tobytes()
    assert names == {"header"} | {f"{g}/{k}" for g in ("param", "adam_m", "adam_v") for k in params}
    assert header["params"]["tok_emb.W"] == {"shape": [VOCAB.size, 3], "dtype": "<f4"}
    assert header["tokenizer"] == {"type": "char", "chars": list(VOCAB.chars)}
    assert header["rng_state"]["bit_generator"] == "PCG64"


def test_make_header_turns_numpy_scalars_into_json_numbers() -> None:
    header = _header(step=np.int64(7), best_val_loss=np.float32(1.5))
    assert type(header["step"]) is int and type(header["best_val_loss"]) is float


def test_overwriting_replaces_the_file(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, _, _, _ = saved
    save_checkpoint(path, params=_params(5), header=_header(step=99))
    ckpt = load_checkpoint(path)
    assert ckpt.step == 99 and ckpt.opt_state is None
    assert ckpt.params["ln_f.gamma"].tobytes() == _params(5)["ln_f.gamma"].tobytes()
    assert sorted(os.listdir(path.parent)) == ["ckpt.npz"]


def test_saved_file_has_ordinary_permissions(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, _, _, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- atomicity


def _fail_mid_write(f: Any, *args: Any, **kwargs: Any) -> None:
    f.write(b"PK\x03\x04 half a zip")
    raise OSError(28, "No space left on device")


def _raise(exc: BaseException) -> Callable[..., None]:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("target", "replacement", "exc"),
    [
        ("checkpoint._write_archive", _fail_mid_write, OSError),
        ("checkpoint._write_archive", _raise(KeyboardInterrupt()), KeyboardInterrupt),
        ("os.fsync", _raise(OSError(5, "I/O error")), OSError),
        ("os.replace", _raise(OSError(18, "Invalid cross-device link")), OSError),
    ],
    ids=["savez-disk-full", "ctrl-c", "fsync", "replace"],
)
def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp_file(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    replacement: Callable[..., None],
    exc: type[BaseException],
) -> None:
    path, _, _, _ = saved
    before = path.read_bytes()
    module, attr = target.split(".")
    monkeypatch.setattr(bevialm.checkpoint if module == "checkpoint" else getattr(bevialm.checkpoint, module), attr, replacement)
    with pytest.raises(exc):
        save_checkpoint(path, params=_params(5), header=_header(step=3))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["ckpt.npz"]
    assert load_checkpoint(path).step == 2


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bevialm.checkpoint, "_write_archive", _fail_mid_write)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "new.npz", params=_params(), header=_header())
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- save-time validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"params": {}}, "no parameters"),
        ({"params": {"x": np.array([None])}}, "numeric array"),
        ({"header": {**_header(), "format": "x"}}, r"fields \['format'\] are written by save_checkpoint"),
        ({"header": {k: v for k, v in _header().items() if k != "tokenizer"}}, "no 'tokenizer' field.*make_header"),
        ({"header": _header(model_config={"lr": np.float32(1.0)})}, "not plain JSON"),
        ({"header": _header(train_config={"x": float("nan")})}, "not plain JSON"),
        ({"header": _header(best_val_loss=float("inf"))}, "best_val_loss"),
        ({"opt_state": AdamWState(1, {}, {})}, "moments m are not keyed like the params"),
    ],
    ids=["no-params", "object-array", "reserved", "no-tokenizer", "numpy-scalar", "nan", "inf-loss", "moments"],
)
def test_save_rejects_bad_input(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"params": _params(), "header": _header(), "opt_state": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "c.npz", **args)
    assert os.listdir(tmp_path) == []


def test_save_rejects_moment_of_wrong_shape(tmp_path: Path) -> None:
    params = _params()
    state = init_state(params)
    state.v["ln_f.gamma"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="moment v of 'ln_f.gamma'"):
        save_checkpoint(tmp_path / "c.npz", params=params, header=_header(), opt_state=state)


# ---------------------------------------------------------------- damaged files


def _load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _load_error(tmp_path / "nope.npz")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in _load_error(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # checkpoints are read through bevialm.data.read_bytes, the one reader of user-named files
    monkeypatch.setattr(os, "open", _raise(PermissionError(13, "Permission denied")))
    assert "cannot be read: Permission denied" in _load_error(tmp_path / "c.npz")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(b"")
    assert "is empty" in _load_error(path)


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b"\x93NUMPY\x01\x00"], ids=["text", "npy"])
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    assert "not a BeviaLLM checkpoint (not an .npz/zip file)" in _load_error(path)


def test_real_npy_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.npy"
    np.save(path, np.zeros(3))
    assert "not an .npz/zip file" in _load_error(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_file(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator], fraction: float
) -> None:
    path, _, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    assert "corrupt or truncated" in _load_error(path)


def test_flipped_byte_in_parameter_data_fails_the_crc(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path, params, _, _ = saved
    data = bytearray(path.read_bytes())
    at = bytes(data).find(params["lm_head.W"].tobytes()) + 5
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    assert "corrupt" in _load_error(path)


def test_every_single_byte_flip_is_detected_or_harmless(tmp_path: Path) -> None:
    """Flip each byte of a small checkpoint in turn: loading either raises a one-line
    CheckpointError or returns exactly the saved content (some zip fields, such as
    timestamps, carry no data). Never a silently different array or header."""
    params = {"lm_head.W": np.arange(6, dtype=np.float32).reshape(2, 3)}
    params, state = step(
        params, {"lm_head.W": np.ones((2, 3), np.float32)}, init_state(params), AdamWConfig()
    )
    path = tmp_path / "small.npz"
    save_checkpoint(path, params=params, header=_header(), opt_state=state)
    original = path.read_bytes()
    reference = load_checkpoint(path)
    detected = 0
    for at in range(len(original)):
        damaged = bytearray(original)
        damaged[at] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            assert "\n" not in str(e)
            detected += 1
            continue
        assert ckpt.header == reference.header
        assert ckpt.opt_state is not None and ckpt.opt_state.t == 1
        for got, want in ((ckpt.params, params), (ckpt.opt_state.m, state.m), (ckpt.opt_state.v, state.v)):
            assert got.keys() == want.keys()
            assert got["lm_head.W"].tobytes() == want["lm_head.W"].tobytes()
    assert detected > 0.75 * len(original)  # the check is not vacuous: most bytes are protected


# ---------------------------------------------------------------- well-formed zips with bad content


def _rewrite(path: Path, edit: Callable[[dict[str, Array], dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the arrays and the decoded header of a saved checkpoint and write it back."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    original = json.loads(arrays["header"].tobytes().decode("utf-8"))
    header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    edit(arrays, header)
    if header != original:
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(path, **arrays)


def _delete(key: str) -> Callable[[dict[str, Array], dict[str, Any]], None]:
    def edit(arrays: dict[str, Array], header: dict[str, Any]) -> None:
        del arrays[key]

    return edit


def _set_header(**fields: Any) -> Callable[[dict[str, Array], dict[str, Any]], None]:
    return lambda arrays, header: header.update(fields)


def _set_array(key: str, value: Array) -> Callable[[dict[str, Array], dict[str, Any]], None]:
    return lambda arrays, header: arrays.update({key: value})


def _drop_field(field: str) -> Callable[[dict[str, Array], dict[str, Any]], None]:
    def edit(arrays: dict[str, Array], header: dict[str, Any]) -> None:
        del header[field]

    return edit


F32 = np.float32


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_delete("header"), "has no header"),
        (_set_array("header", np.zeros(3, dtype=np.int32)), "header must be a 1-D uint8 array"),
        (_set_header(format="something-else"), "has format 'something-else', expected 'bevialm-checkpoint'"),
        (_set_header(version=3), "format version 3; this BeviaLLM reads versions 1, 2"),
        (_drop_field("format"), "has format None"),
        (_drop_field("model_config"), "header has no 'model_config' field"),
        (_set_header(model_config=[1]), "'model_config' must be an object, got list"),
        (_set_header(tokenizer="abc"), "'tokenizer' is invalid (tokenizer must be a JSON object, got str)"),
        (_set_header(tokenizer={"type": "char", "chars": ["b", "a"]}), "sorted and unique"),
        (
            _set_header(tokenizer={"type": "bpe", "pre_split": "gpt2", "merges": [[97, 98], [97, 999]]}),
            "'tokenizer' is invalid (BPE: merge 1 is (97, 999), but only tokens 0..256 exist before it)",
        ),
        (_set_header(tokenizer={"type": "bpe", "pre_split": "(a*)*b", "merges": []}), "pre-split must be one of"),
        (_drop_field("tokenizer"), "header has no 'tokenizer' field"),
        (_set_header(step=-1), "'step' must be an integer >= 0"),
        (_set_header(step=True), "'step' must be an integer >= 0"),
        (_set_header(rng_state=5), "'rng_state' must be an object or null"),
        (_set_header(best_val_loss="low"), "'best_val_loss' must be a finite number"),
        (_set_header(params={}), "header lists no parameters"),
        (_delete("param/ln_f.gamma"), "missing parameter 'ln_f.gamma' listed in its header"),
        (_set_array("param/extra.W", np.zeros(2, F32)), "holds parameter 'extra.W' not listed in its header"),
        (
            _set_array("param/ln_f.gamma", np.zeros(4, F32)),
            r"parameter 'ln_f.gamma' is <f4(4,), its header says",
        ),
        (_set_array("param/ln_f.gamma", np.zeros(3)), "parameter 'ln_f.gamma' is <f8(3,)"),
        (_set_array("notes", np.zeros(1)), "unexpected array 'notes'"),
        (_delete("adam_m/lm_head.W"), "no adam_m moment for parameter 'lm_head.W'"),
        (
            _set_array("adam_v/ln_f.gamma", np.zeros(5, F32)),
            "adam_v moment of 'ln_f.gamma' is float32(5,), the parameter is float32(3,)",
        ),
        (_set_array("adam_v/ln_f.gamma", np.zeros(3)), "adam_v moment of 'ln_f.gamma' is float64(3,)"),
        (_set_array("adam_m/ghost.W", np.zeros(1, F32)), "adam_m moment for unknown parameter 'ghost.W'"),
        (_set_header(optimizer=None), "holds adam_m arrays but its header has no optimizer"),
        (_set_header(optimizer={"name": "adamw"}), "'optimizer' must hold a step count t >= 0"),
        (_set_header(optimizer=[3]), "'optimizer' must hold a step count"),
    ],
)
def test_bad_content_is_explained_in_one_line(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
    edit: Callable[[dict[str, Array], dict[str, Any]], None],
    message: str,
) -> None:
    path, _, _, _ = saved
    _rewrite(path, edit)
    error = _load_error(path)
    assert message in error


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "header is not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "JSON object, got list"),
    ],
)
def test_unparsable_header(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator], raw: bytes, message: str
) -> None:
    path, _, _, _ = saved
    _rewrite(path, _set_array("header", np.frombuffer(raw, dtype=np.uint8)))
    assert message in _load_error(path)


# ---------------------------------------------------------------- helpers


def test_restore_rng_rejects_other_generators_and_bad_states() -> None:
    with pytest.raises(CheckpointError, match="PCG64"):
        restore_rng(np.random.Generator(np.random.MT19937(0)).bit_generator.state)
    with pytest.raises(CheckpointError, match="PCG64"):
        restore_rng([1, 2])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="RNG state is invalid"):
        restore_rng({"bit_generator": "PCG64", "state": "nope"})


def test_validate_against_names_the_first_mismatch(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    ckpt = load_checkpoint(saved[0])
    validate_against(ckpt, SHAPES)
    with pytest.raises(
        CheckpointError,
        match=r"^parameter 'pos_emb.W' has shape \(4, 3\) in the checkpoint, the model expects \(8, 3\)$",
    ):
        validate_against(ckpt, {**SHAPES, "pos_emb.W": (8, 3), "ln_f.gamma": (5,)})
    with pytest.raises(CheckpointError, match="^checkpoint has no parameter 'ln_f.beta'"):
        validate_against(ckpt, {**SHAPES, "ln_f.beta": (3,)})
    with pytest.raises(
        CheckpointError, match="^checkpoint has parameter 'lm_head.W', which the model does not$"
    ):
        validate_against(ckpt, {k: s for k, s in SHAPES.items() if k != "lm_head.W"})


def test_describe_summarises(saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator]) -> None:
    text = describe(load_checkpoint(saved[0]))
    n = sum(int(np.prod(s)) for s in SHAPES.values())
    assert text.startswith(f"BeviaLLM checkpoint v2: step 2, {n:,} parameters in 6 float32 arrays")
    assert f"tokenizer: characters, {VOCAB.size} tokens" in text and "AdamW t=2" in text
    assert "best val loss 2.5000" in text and "dim=3" in text
    bare = Checkpoint(
        params=_params(),
        header={**_header(best_val_loss=None, model_config={}), "version": 1},
        opt_state=None,
    )
    assert (
        "no optimizer state" in describe(bare)
        and "none yet" in describe(bare)
        and "(no config)" in describe(bare)
    )


def test_a_version_1_checkpoint_with_a_character_vocabulary_still_loads(
    saved: tuple[Path, dict[str, Array], AdamWState, np.random.Generator],
) -> None:
    path = saved[0]

    def as_version_1(arrays: dict[str, Array], header: dict[str, Any]) -> None:
        header["version"] = 1
        header["vocab"] = header.pop("tokenizer")["chars"]

    _rewrite(path, as_version_1)
    ckpt = load_checkpoint(path)
    assert ckpt.tokenizer == VOCAB and ckpt.header["tokenizer"]["type"] == "char"


def test_a_bpe_tokenizer_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    from bevialm.tokenizer import train_bpe

    bpe = train_bpe("hello, world! hello, world!\n" * 3, 270)
    size = bpe.vocab_size
    params = {**_params(), "tok_emb.W": np.zeros((size, 3), F32), "lm_head.W": np.zeros((3, size), F32)}
    save_checkpoint(tmp_path / "bpe.npz", params=params, header=_header(tokenizer=bpe, model_config={"vocab_size": size}))
    ckpt = load_checkpoint(tmp_path / "bpe.npz")
    assert ckpt.tokenizer == bpe and ckpt.tokenizer.encode("hello").tolist() == bpe.encode("hello").tolist()
    assert f"tokenizer: byte-level BPE, {size} tokens" in describe(ckpt)
