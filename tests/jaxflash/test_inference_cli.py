"""``python -m jaxflash.inference generate``: a trained checkpoint continues text prompts (greedy: the
same as ``generate``), token prompts, streaming; bad arguments exit with status 2 and the reason."""

import sys

import numpy as np
import pytest
from jaxflash.train import apply_overrides, load_model, presets, train

from jaxflash.data import decode_bytes, encode_bytes
from jaxflash.inference import generate
from jaxflash.inference.cli import main

TINY = [
    "steps=2",
    "model.d_model=16",
    "model.d_inner=32",
    "model.n_layers=1",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "batch_size=4",
    "checkpoint_every=2",
    "eval_batches=1",
    "sample_tokens=0",
    "progress=false",
    "mesh.data=1",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(apply_overrides(presets.get("lm_long_conv"), [*TINY, f"workdir={path}"]), echo=None)
    return path


def test_text_prompts_greedy(workdir, capsys):
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(workdir),
                "--prompt",
                "def ",
                "--prompt",
                "The cat",
                "--max-new-tokens",
                "5",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    out = generate(
        load_model(workdir),
        [encode_bytes("def ").tolist(), encode_bytes("The cat").tolist()],
        5,
        temperature=0.0,
    )
    expected = [decode_bytes(np.asarray(r)[:n]) for r, n in zip(out.tokens, out.lengths, strict=True)]
    assert lines[-2:] == expected


def test_token_prompts_and_streaming(workdir, capsys):
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(workdir),
                "--tokens",
                "65,66",
                "--max-new-tokens",
                "3",
                "--temperature",
                "0",
                "--stream",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("AB")  # a byte model prints text
    assert lines[0] == lines[1][2:]  # the streamed line is the continuation


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokens", "1,x"], "comma-separated integers"),
        (["--prompt", "a", "--top-p", "2"], "top_p"),
        (["--prompt", "a" * 40], "max_seq_len"),
    ],
)
def test_bad_arguments(workdir, capsys, argv, message):
    try:
        code = main(["generate", "--checkpoint", str(workdir), *argv])
    except SystemExit as e:
        code = 2 if isinstance(e.code, str) else e.code
        print(e.code, file=sys.stderr)
    assert code == 2 and message in capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "a"]) == 2
    assert "not a jaxflash.train workdir" in capsys.readouterr().err


def test_distill_table(tmp_path, capsys):
    path = tmp_path / "hyena"
    train(
        apply_overrides(presets.get("lm_hyena"), [*TINY, "model.hyena.filter_order=8", f"workdir={path}"]),
        echo=None,
    )
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(path),
                "--prompt",
                "a",
                "--max-new-tokens",
                "2",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "distill",
                "--checkpoint",
                str(path),
                "--orders",
                "2",
                "6",
                "--steps",
                "20",
                "--eval-batches",
                "1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| Hyena (convolution) |") and lines[3].startswith("| distilled, order 2 |")
    assert len(lines) == 5
    conv = float(lines[2].split("|")[3])
    six = float(lines[4].split("|")[3])
    assert abs(six - conv) < 0.05  # order 6 tracks the convolutional model on a 32-token context


def test_distill_refuses_a_model_without_hyena(workdir, capsys):
    assert main(["distill", "--checkpoint", str(workdir), "--orders", "2"]) == 2
    assert "no Hyena mixer" in capsys.readouterr().err
