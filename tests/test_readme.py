"""The README's Python examples run as written, and compute what their comments say."""

import pathlib
import re

import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> dict[str, str]:
    """The README's ```python blocks, by the heading of the section they stand in."""
    blocks, heading = {}, None
    for part in re.split(r"^(## .*)$", README.read_text(), flags=re.M):
        if part.startswith("## "):
            heading = part[3:].strip()
        elif heading is not None:
            code = re.findall(r"```python\n(.*?)```", part, flags=re.S)
            if code:
                blocks[heading] = "\n".join(code)
    return blocks


def test_the_readme_has_the_examples():
    sections = {"Example", "Models", "Train", "Checkpoints", "Inference", "Quantization and offloading"}
    assert sections | {"Diffusion", "Retrieval and contrastive losses"} <= set(_blocks())


def test_op_example(capsys):
    scope: dict = {}
    exec(_blocks()["Example"], scope)
    assert scope["out"].shape == (2, 1000, 8, 64) and scope["y"].shape == (2, 4096, 128)
    assert "attention" in capsys.readouterr().out


def test_model_example():
    """Build, forward, one optax train step, recurrent decode."""
    scope: dict = {}
    exec(_blocks()["Models"], scope)
    logits, loss, generated = scope["logits"], scope["loss"], scope["generated"]
    assert logits.shape == (4, 16, 16) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(loss)) and abs(float(loss) - float(jnp.log(16.0))) < 1.0
    assert len(generated) == 8 and generated[0].shape == (4,)
    step = scope["train_step"]
    assert float(step(scope["model"], scope["optimizer"], scope["tokens"])) < float(loss)  # the step trains


def test_train_example(tmp_path):
    """Train a few steps, load the checkpoint as a model, generate from it."""
    code = _blocks()["Train"].replace("/tmp/jaxflash-readme-run", str(tmp_path / "run"))
    scope: dict = {}
    exec(code, scope)
    assert scope["result"].step == 4 and scope["tokens"].shape == (1, 12)
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_checkpoints_example(tmp_path, capsys):
    """Export to safari's layout as safetensors, load back with the config inferred, same logits."""
    code = _blocks()["Checkpoints"].replace(
        "/tmp/jaxflash-readme-h3.safetensors", str(tmp_path / "h3.safetensors")
    )
    scope: dict = {}
    exec(code, scope)
    assert (tmp_path / "h3.safetensors").is_file()
    assert scope["report"].inferred["h3.head_dim"] == 2 and "keys used" in capsys.readouterr().out


def test_inference_example(capsys):
    """Ragged generation, distillation, Hydragen equal to plain generation."""
    scope: dict = {}
    exec(_blocks()["Inference"], scope)
    assert scope["out"].tokens.shape == (2, 12) and scope["out"].lengths.tolist() == [12, 10]
    assert scope["fast"].tokens.shape == (1, 12)
    shared, same, questions = scope["shared"], scope["same"], scope["questions"]
    for b in range(len(questions)):
        start = len(scope["system"][0])
        n = int(same.lengths[b])
        assert shared.tokens[b, : int(shared.lengths[b])].tolist() == same.tokens[b, start:n].tolist()
    assert scope["samples"].tokens.shape == (8, 7)
    assert "relative l2 error" in capsys.readouterr().out


def test_quantization_and_offloading_example(capsys):
    """ScaleSearch lowers the error; PTQ quantizes every Linear kernel; the offloaded engine's greedy
    tokens are generate's; the policy search prints a policy."""
    import numpy as np

    from jaxflash.inference import generate

    scope: dict = {}
    exec(_blocks()["Quantization and offloading"], scope)
    assert scope["q"].codes.shape == (64, 128) and scope["q"].scales.shape == (64, 16)
    base, searched = (float(e) for e in scope["err"])
    assert searched < base
    assert len(scope["report"].paths) > 0
    expected = np.asarray(generate(scope["gpt"], scope["prompts"], 6, temperature=0.0).tokens)[:, 4:10]
    np.testing.assert_array_equal(scope["tokens"], expected)
    assert scope["stats"].disk_to_device_bytes > 0
    out = capsys.readouterr().out
    assert "4.5" in out and "--percent" in out


def test_diffusion_example():
    """DiT's loss, guided DDIM sampling, a graft and Chipmunk sampling, at init."""
    from jaxflash.models import HyenaY

    scope: dict = {}
    exec(_blocks()["Diffusion"], scope)
    assert set(scope["losses"]) == {"loss", "mse", "vb"} and bool(jnp.isfinite(scope["losses"]["loss"]).all())
    assert scope["images"].shape == (4, 8, 8, 1) and scope["fast"].shape == (4, 8, 8, 1)
    assert isinstance(scope["hybrid"].blocks[1].attn, HyenaY) and not isinstance(
        scope["dit"].blocks[1].attn, HyenaY
    )


def test_retrieval_example(capsys):
    """BM25 ranks the toy corpus right; the encoder, search and losses run and give finite values."""
    scope: dict = {}
    exec(_blocks()["Retrieval and contrastive losses"], scope)
    assert capsys.readouterr().out.split() == ["1.0"]
    assert scope["d"].shape == (3, 32) and scope["ranked"].shape == (2, 3)
    assert bool(jnp.isfinite(scope["opl"])) and bool(jnp.isfinite(scope["sc"])) and float(scope["sc"]) > 0
