"""The grafting experiments of REPRODUCTIONS.md on a DiT trained on the digits, as one command:

    python -m jaxflash.diffusion.experiments graft --teacher runs/dit_digits_s0 --out runs/grafting

``--teacher`` is a workdir of ``python -m jaxflash.train dit_digits``. Every variant starts from the
teacher's EMA weights (``--weights raw`` for the last weights) and is scored the same way: class-
conditional samples (DDIM, 50 steps, no guidance, each predicted ``x_0`` clipped to [-1, 1]) drawn with
``--seeds`` sampling seeds, digits-FD and label accuracy from :class:`jaxflash.diffusion.DigitsEvaluator`
(its floor and ceiling printed first), mean and spread over the seeds. The variants:

- the teacher itself;
- for each operator and each fraction of the blocks (interleaved, :func:`jaxflash.models.interleaved`):
  stage 1 (each new operator distilled on the teacher's operator activations at noised training images,
  L1; its held-out MSE on the validation images next to the zero-output baseline) then stage 2
  (:func:`jaxflash.diffusion.finetune` on 10% of the training images);
- the controls: the teacher through stage 2 alone (what the finetune itself costs), self-grafts (a
  fresh MHA, an MLP of ratio 4, through both stages), stage 2 without stage 1 (random operators), and
  the same hybrid trained from scratch (every weight random) for the stage-2 budget;
- the depth-to-width restructuring (:func:`jaxflash.models.parallelize`) finetuned with the stage-2
  recipe, against a model of its depth trained from scratch for the same budget.

Results go to ``--out``/results.json as they come (a rerun skips the variants already there) and a
markdown table is printed at the end. The training-set subset, the seeds and every step count are
arguments; the defaults are what REPRODUCTIONS.md ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

# (kind, operator name, options, label) of the grafted variants.
OPERATOR_VARIANTS = (
    ("attn", "hyena_x", {}, "MHA -> Hyena-X"),
    ("attn", "hyena_y", {}, "MHA -> Hyena-Y"),
    ("attn", "hyena_se", {}, "MHA -> Hyena-SE"),
    ("attn", "swa", {"window": 4}, "MHA -> SWA (w 4)"),
    ("attn", "linear_attention", {}, "MHA -> linear attention"),
    ("mlp", "mlp", {"ratio": 2.0}, "MLP -> MLP r 2"),
    ("mlp", "mlp", {"ratio": 6.0}, "MLP -> MLP r 6"),
)
FRACTIONS = (0.5, 0.75)


@dataclasses.dataclass(frozen=True)
class Budget:
    stage1_images: int = 512  # training images whose activations stage 1 regresses on
    stage1_steps: int = 400
    stage1_batch: int = 32
    stage1_lr: float = 5e-4
    stage2_fraction: float = 0.1  # of the training images
    stage2_steps: int = 600
    stage2_batch: int = 32
    stage2_lr: float = 1e-4
    stage2_warmup: int = 50
    stage2_ema: float = 0.99


class Experiment:
    """The teacher, its data, the evaluator and the scoring shared by every variant."""

    def __init__(
        self, teacher_dir: str, weights: str, seeds: tuple[int, ...], budget: Budget, out: pathlib.Path
    ):
        import jax

        from jaxflash.data import make_dataset
        from jaxflash.diffusion import DigitsEvaluator, create_diffusion
        from jaxflash.train import config as config_lib
        from jaxflash.train import load_model

        self.jax = jax
        run = config_lib.loads((pathlib.Path(teacher_dir) / "config.json").read_text())
        self.run = run
        self.teacher = load_model(teacher_dir, ema=weights == "ema")
        self.train = make_dataset(run.data, "train")
        self.held_out = make_dataset(run.data, "validation")
        self.diffusion = create_diffusion(
            "", diffusion_steps=run.diffusion.diffusion_steps, noise_schedule=run.diffusion.noise_schedule
        )
        self.sampling = create_diffusion(
            "ddim50",
            diffusion_steps=run.diffusion.diffusion_steps,
            noise_schedule=run.diffusion.noise_schedule,
        )
        self.evaluator = DigitsEvaluator(
            self.train.images,
            self.held_out.images,
            self.held_out.labels,
            self.held_out.num_classes,
            seed=run.seed,
        )
        self.seeds = seeds
        self.budget = budget
        self.out = out
        self.path = out / "results.json"
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        n2 = max(1, round(budget.stage2_fraction * self.train.num_examples))
        rows = np.random.default_rng([run.seed, 11]).permutation(self.train.num_examples)
        self.stage2_rows = np.sort(rows[:n2])
        self.stage1_rows = np.sort(rows[: budget.stage1_images])

    def score(self, model) -> dict[str, float]:
        """digits-FD, label accuracy and nearest-neighbour distance over the sampling seeds."""
        from jaxflash.diffusion import sample_dit

        n = self.evaluator.num_samples
        labels = np.arange(n) % self.run.model.num_classes
        per_seed = []
        for s in self.seeds:
            images = sample_dit(
                model, labels, self.jax.random.key(1000 + s), diffusion=self.sampling, clip_denoised=True
            )
            per_seed.append(self.evaluator.evaluate(np.asarray(images), labels))
        out = {}
        for k in per_seed[0]:
            values = np.array([r[k] for r in per_seed])
            out[k], out[f"{k}_std"] = (
                float(values.mean()),
                float(values.std(ddof=1) if len(values) > 1 else 0.0),
            )
        return out

    def record(self, name: str, values: dict[str, Any]) -> None:
        self.results[name] = values
        self.out.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.results, indent=2) + "\n")
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float) and not k.endswith("_std")
        )
        print(f"{name}: {shown}", flush=True)

    # --- the stages ---

    def stage1(self, student, indices: list[int], kind: str, key) -> dict[str, float]:
        """Distil each grafted operator in place on ``student``; the held-out MSE and the zero baseline."""
        from jaxflash.diffusion import collect_activations, distill_operator

        b = self.budget
        acts = collect_activations(
            self.teacher,
            self.diffusion,
            self.train.images[self.stage1_rows],
            self.train.labels[self.stage1_rows],
            indices,
            kind,
            key=self.jax.random.fold_in(key, 0),
        )
        val = collect_activations(
            self.teacher,
            self.diffusion,
            self.held_out.images,
            self.held_out.labels,
            indices,
            kind,
            key=self.jax.random.fold_in(key, 1),
        )
        mse, zero = [], []
        for i in indices:
            operator = getattr(student.blocks[i], kind)
            trained, history = distill_operator(
                operator,
                acts[i].inputs,
                acts[i].targets,
                key=self.jax.random.fold_in(key, 2 + i),
                loss="l1",
                steps=b.stage1_steps,
                batch_size=b.stage1_batch,
                lr=b.stage1_lr,
                validation=(val[i].inputs, val[i].targets),
            )
            setattr(student.blocks[i], kind, trained)
            mse.append(history["val_mse"][-1])
            zero.append(float(np.mean(np.square(val[i].targets))))
        return {"stage1_val_mse": float(np.mean(mse)), "stage1_zero_mse": float(np.mean(zero))}

    def stage2(self, student, key, *, rows=None):
        from jaxflash.diffusion import finetune

        b = self.budget
        rows = self.stage2_rows if rows is None else rows
        start = time.perf_counter()
        _, ema, losses = finetune(
            student,
            self.diffusion,
            self.train.images[rows],
            self.train.labels[rows],
            key=key,
            steps=b.stage2_steps,
            batch_size=b.stage2_batch,
            lr=b.stage2_lr,
            warmup_steps=b.stage2_warmup,
            ema_decay=b.stage2_ema,
        )
        return ema, {
            "stage2_final_loss": float(np.mean(losses[-50:])),
            "stage2_s": time.perf_counter() - start,
        }

    def fresh(self, seed: int, **config_changes):
        from flax import nnx

        from jaxflash.models import DiT

        cfg = dataclasses.replace(self.run.model, **config_changes)
        return DiT(cfg, rngs=nnx.Rngs(seed))


def run_graft(args: argparse.Namespace) -> int:
    from flax import nnx

    from jaxflash.models import graft, interleaved, parallelize

    budget = Budget(stage2_steps=args.stage2_steps, stage1_steps=args.stage1_steps)
    ex = Experiment(args.teacher, args.weights, tuple(args.seeds), budget, pathlib.Path(args.out))
    key = ex.jax.random.key(args.seed)
    for name, values in ex.evaluator.bounds().items():
        print(
            f"digits evaluation {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True
        )
    ex.results.setdefault("bounds", ex.evaluator.bounds())
    if "teacher" not in ex.results:
        ex.record("teacher", ex.score(ex.teacher))
    n = ex.run.model.n_layers

    def variant(name: str, build, *, stage1_kind: str | None, indices: list[int] | None, rows=None) -> None:
        if name in ex.results or (args.only and not any(o in name for o in args.only)):
            return
        k = ex.jax.random.fold_in(key, len(name) * 1000 + sum(map(ord, name)))
        student = build()
        values: dict[str, Any] = {"blocks": indices}
        if stage1_kind is not None:
            values.update(ex.stage1(student, indices, stage1_kind, ex.jax.random.fold_in(k, 1)))
        model, info = ex.stage2(student, ex.jax.random.fold_in(k, 2), rows=rows)
        values.update(info)
        values.update(ex.score(model))
        ex.record(name, values)

    for kind, op, options, label in OPERATOR_VARIANTS:
        for fraction in FRACTIONS:
            idx = interleaved(n, fraction)
            variant(
                f"{label}, {fraction:.0%}",
                lambda idx=idx, kind=kind, op=op, options=options: graft(
                    ex.teacher, idx, kind=kind, operator=op, rngs=nnx.Rngs(7), **options
                ),
                stage1_kind=kind,
                indices=idx,
            )
    half = interleaved(n, 0.5)
    variant(
        "control: the teacher, stage 2 only (no graft)",
        lambda: nnx.clone(ex.teacher),
        stage1_kind=None,
        indices=None,
    )
    controls = (
        ("self-graft MHA -> MHA, 50%", "attn", "mha", {}),
        ("self-graft MLP -> MLP r 4, 50%", "mlp", "mlp", {"ratio": 4.0}),
    )
    for name, kind, op, options in controls:
        variant(
            name,
            lambda kind=kind, op=op, options=options: graft(
                ex.teacher, half, kind=kind, operator=op, rngs=nnx.Rngs(7), **options
            ),
            stage1_kind=kind,
            indices=half,
        )
    for op, label in (("hyena_y", "Hyena-Y"), ("swa", "SWA (w 4)")):
        variant(
            f"control: MHA -> {label}, 50%, stage 2 only",
            lambda op=op: graft(ex.teacher, half, kind="attn", operator=op, rngs=nnx.Rngs(7)),
            stage1_kind=None,
            indices=half,
        )
        variant(
            f"control: MHA -> {label}, 50% hybrid from scratch",
            lambda op=op: graft(ex.fresh(args.seed), half, kind="attn", operator=op, rngs=nnx.Rngs(7)),
            stage1_kind=None,
            indices=half,
        )
    variant(
        "parallel: pairs of blocks in parallel (depth / 2)",
        lambda: parallelize(ex.teacher),
        stage1_kind=None,
        indices=None,
    )
    variant(
        "control: depth / 2 from scratch",
        lambda: ex.fresh(args.seed, n_layers=n // 2),
        stage1_kind=None,
        indices=None,
    )
    print(markdown(ex.results))
    return 0


# (label, ChipmunkConfig fields) of the Chipmunk variants; the first keeps everything (a check).
CHIPMUNK_VARIANTS = (
    ("chipmunk, all columns and units kept", {"attn_top_keys": 1.0, "mlp_top_keys": 1.0}),
    ("chipmunk attn 50%, mlp 50%, full every 10", {"attn_top_keys": 0.5, "mlp_top_keys": 0.5}),
    ("chipmunk attn 25%, mlp 30%, full every 10", {}),
    ("chipmunk attn 25%, mlp 30%, full every 5", {"full_step_every": 5}),
    ("chipmunk attn 10%, mlp 10%, full every 10", {"attn_top_keys": 0.1, "mlp_top_keys": 0.1}),
    ("chipmunk attn 25% only, full every 10", {"sparse_mlp": False}),
    ("chipmunk attn 25%, mlp 30%, 4x4 tiles", {"reorder_patch": 4}),
    ("chipmunk attn 25%, mlp 30% shared units", {"mlp_shared_units": True}),
    (
        "chipmunk attn 25%, mlp 30% shared units, full every 25",
        {"mlp_shared_units": True, "full_step_every": 25},
    ),
    ("chipmunk mlp 30% shared units only", {"mlp_shared_units": True, "sparse_attn": False}),
)


def flop_fraction(model_config: Any, config: Any, stats: Any) -> float:
    """The multiply-adds a Chipmunk sampling does, as a fraction of dense sampling's, from the densities
    it realised (``ChipmunkStats``), counting per image and layer: the adaLN modulation ``12 D^2``, qkv
    and output projections ``8 T D^2``, attention ``4 T^2 D`` (times the attention density at a sparse
    step), the MLP ``4 T D F`` (times the MLP density) plus its block-mean pre-activations ``2 n D F``;
    a full step of a sparse layer also pays the column sums ``2 T^2 D`` and ``A_S`` (``4 T^2 D`` times
    the column fraction). The final layer and the embeddings are left out (the same in both)."""
    d, f = model_config.d_model, model_config.ffn_dim
    t = model_config.num_patches
    n_blocks = -(-t // config.mlp_block_rows)
    fixed = 12 * d * d + 8 * t * d * d
    attn, mlp = 4 * t * t * d, 4 * t * d * f
    dense = fixed + attn + mlp
    total = 0.0
    steps, layers = np.asarray(stats.attn_density).shape
    for s in range(steps):
        for layer in range(layers):
            a, m = float(stats.attn_density[s, layer]), float(stats.mlp_density[s, layer])
            if bool(stats.full_step[s]) or layer < config.first_dense_layers:
                extra = 0.0
                if layer >= config.first_dense_layers:
                    if config.sparse_attn:
                        extra += 2 * t * t * d + config.attn_top_keys * attn
                    if config.sparse_mlp:
                        extra += 2 * n_blocks * d * f
                total += dense + extra
            else:
                total += fixed + a * attn + m * mlp + (2 * n_blocks * d * f if config.sparse_mlp else 0)
    return total / (dense * steps * layers)


def run_chipmunk(args: argparse.Namespace) -> int:
    """Chipmunk's sparse deltas on the teacher: quality (against dense samples from the same noise, and
    digits-FD) and the wall-clock time of sampling, dense and sparse timed in this run."""
    from jaxflash.diffusion import ChipmunkConfig, chipmunk_sample, sample_dit

    ex = Experiment(args.teacher, args.weights, tuple(args.seeds), Budget(), pathlib.Path(args.out))
    jax = ex.jax
    n = ex.evaluator.num_samples
    labels = np.arange(n) % ex.run.model.num_classes
    ex.results.setdefault("bounds", ex.evaluator.bounds())

    def timed(fn) -> tuple[np.ndarray, float]:
        jax.block_until_ready(fn())  # compile
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(fn())
            best = min(best, time.perf_counter() - start)
        return np.asarray(out), best

    def dense(seed):
        return sample_dit(
            ex.teacher, labels, jax.random.key(1000 + seed), diffusion=ex.sampling, clip_denoised=True
        )

    _, dense_s = timed(lambda: dense(ex.seeds[0]))
    if args.retime:  # only the clocks: every sampling timed again, in this run
        for label, fields in (("dense", None), *CHIPMUNK_VARIANTS):
            if label not in ex.results:
                continue
            if fields is None:
                seconds = dense_s
            else:
                config = ChipmunkConfig(**fields)
                seconds = timed(
                    lambda config=config: chipmunk_sample(
                        ex.teacher,
                        labels,
                        jax.random.key(1000),
                        diffusion=ex.sampling,
                        config=config,
                        clip_denoised=True,
                    )
                )[1]
            ex.results[label]["sample_s"] = seconds
            if fields is not None:
                ex.results[label]["speedup"] = dense_s / seconds
            ex.record(label, ex.results[label])
        print(markdown(ex.results))
        return 0
    reference = {s: np.asarray(dense(s)) for s in ex.seeds}
    if "dense" not in ex.results:
        ex.record("dense", {**ex.score(ex.teacher), "sample_s": dense_s})
    for label, fields in CHIPMUNK_VARIANTS:
        if label in ex.results:
            continue
        config = ChipmunkConfig(**fields)

        def sparse(seed, config=config):
            return chipmunk_sample(
                ex.teacher,
                labels,
                jax.random.key(1000 + seed),
                diffusion=ex.sampling,
                config=config,
                clip_denoised=True,
            )

        _, sparse_s = timed(lambda sparse=sparse: sparse(ex.seeds[0]))
        per_seed, errors = [], []
        for seed in ex.seeds:
            images = np.asarray(sparse(seed))
            errors.append(float(np.linalg.norm(images - reference[seed]) / np.linalg.norm(reference[seed])))
            per_seed.append(ex.evaluator.evaluate(images, labels))
        _, stats = chipmunk_sample(
            ex.teacher,
            labels[:16],
            jax.random.key(1000),
            diffusion=ex.sampling,
            config=config,
            clip_denoised=True,
            return_stats=True,
        )
        sparse_steps = ~np.asarray(stats.full_step)
        values = {
            "sample_rel_error": float(np.mean(errors)),
            "attn_density": float(np.asarray(stats.attn_density)[sparse_steps].mean()),
            "mlp_density": float(np.asarray(stats.mlp_density)[sparse_steps].mean()),
            "attn_step_error": float(np.asarray(stats.attn_error)[sparse_steps].mean()),
            "mlp_step_error": float(np.asarray(stats.mlp_error)[sparse_steps].mean()),
            "flop_fraction": flop_fraction(ex.run.model, config, stats),
            "sample_s": sparse_s,
            "speedup": dense_s / sparse_s,
        }
        for k in per_seed[0]:
            v = np.array([r[k] for r in per_seed])
            values[k], values[f"{k}_std"] = float(v.mean()), float(v.std(ddof=1) if len(v) > 1 else 0.0)
        ex.record(label, values)
    print(markdown(ex.results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    """The results as a table: grafting columns (stage-1 MSE) or Chipmunk columns (error, speed)."""
    chipmunk = any("speedup" in r for r in results.values())
    extra = ["sample error vs dense", "density attn / mlp", "FLOPs vs dense", "sampling s", "speed-up"]
    extra = extra if chipmunk else []
    head = ["variant"] + ([] if chipmunk else ["stage-1 held-out MSE (zero output)"])
    head += ["digits-FD", "label accuracy", "NN distance", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name == "bounds":
            for bound, v in r.items():
                what = "real held-out images" if bound == "floor" else "uniform noise"
                cells = [f"{bound} ({what})"] + ([] if chipmunk else [""])
                cells += [f"{v['digits_fd']:.3f}", f"{v['label_accuracy']:.3f}", f"{v['nn_distance']:.3f}"]
                lines.append("| " + " | ".join(cells + [""] * len(extra)) + " |")
            continue
        cells = [name]
        if not chipmunk:
            cells.append(
                f"{r['stage1_val_mse']:.4f} ({r['stage1_zero_mse']:.4f})" if "stage1_val_mse" in r else ""
            )
        cells += [
            f"{r['digits_fd']:.3f} ± {r['digits_fd_std']:.3f}",
            f"{r['label_accuracy']:.3f} ± {r['label_accuracy_std']:.3f}",
            f"{r['nn_distance']:.3f}",
        ]
        if chipmunk:
            sparse = "speedup" in r
            cells += [
                f"{r['sample_rel_error']:.4f}" if sparse else "",
                f"{r['attn_density']:.2f} / {r['mlp_density']:.2f}" if sparse else "1 / 1",
                f"{r['flop_fraction']:.2f}" if sparse else "1",
                f"{r['sample_s']:.2f}",
                f"{r['speedup']:.2f}x" if sparse else "1.00x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxflash.diffusion.experiments", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("graft", help="grafting: operators x fractions, controls, depth to width")
    g.add_argument("--teacher", required=True, help="a workdir of python -m jaxflash.train dit_digits")
    g.add_argument("--out", required=True, help="folder for results.json")
    g.add_argument("--weights", choices=("ema", "raw"), default="ema")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (the spread)")
    g.add_argument("--seed", type=int, default=0, help="stage 1 / stage 2 randomness")
    g.add_argument("--stage1-steps", type=int, default=Budget.stage1_steps)
    g.add_argument("--stage2-steps", type=int, default=Budget.stage2_steps)
    g.add_argument(
        "--only", nargs="*", default=[], help="run only the variants whose name contains one of these"
    )
    c = sub.add_parser("chipmunk", help="Chipmunk's sparse deltas: error, digits-FD and speed against dense")
    c.add_argument("--teacher", required=True, help="a workdir of python -m jaxflash.train dit_digits")
    c.add_argument("--out", required=True, help="folder for results.json")
    c.add_argument("--weights", choices=("ema", "raw"), default="ema")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (the spread)")
    c.add_argument("--repeats", type=int, default=3, help="timed repeats of one sampling (the best is kept)")
    c.add_argument(
        "--retime", action="store_true", help="time the variants already in results.json again, nothing else"
    )
    args = p.parse_args(argv)
    if args.command == "graft":
        return run_graft(args)
    return run_chipmunk(args)


if __name__ == "__main__":
    sys.exit(main())
