"""Equal-compute study: MAE, the 4-mask control, MI-max only, MI-min only and MI-MAE on digits.

Every method sees the same number of encoder views (256 per step). After pretraining,
each checkpoint is read out with k-NN, the final one also with a linear probe, beside
a random-initialization floor. Results are paired by seed against the control.

Writes ``docs/study.md``, ``docs/study_knn.png``, ``docs/study_losses.png`` and the raw
``results.json`` in the work dir. On 2 CPU cores the default (5 seeds) took 60 minutes.

Example::

    python tools/study_equal_compute.py --seeds 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimae.checkpoint import encoder_state_dict  # noqa: E402
from mimae.engine import load_run_checkpoint  # noqa: E402
from mimae.evaluation import extract_features, knn_accuracy, linear_probe_accuracy  # noqa: E402
from mimae.models import VisionTransformer  # noqa: E402

METHODS = {
    "MAE": "configs/study/digits_mae.py",
    "control (4 masks)": "configs/study/digits_control-4mask.py",
    "MI-max only": "configs/study/digits_mimax-only.py",
    "MI-min only": "configs/study/digits_mimin-only.py",
    "MI-MAE": "configs/study/digits_mimae.py",
}
CONTROL = "control (4 masks)"
VIEWS_PER_STEP = 256
ENCODER = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4)
MEAN, STD = 78.0, 96.0


def write_digits(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write the digits as 32 x 32 PNGs in ImageNet layout; return normalized train/test tensors."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=0.25, random_state=0, stratify=digits.target)
    tensors = {}
    for split, ids in (("train", train_idx), ("val", test_idx)):
        batch = []
        for i in ids:
            img = Image.fromarray(images[i]).resize((32, 32), Image.BICUBIC)
            folder = osp.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            path = osp.join(folder, f"{i:04d}.png")
            if not osp.exists(path):
                img.save(path)
            batch.append(np.asarray(img, dtype=np.float32))
        pixels = torch.from_numpy(np.stack(batch))[:, None].expand(-1, 3, -1, -1)
        tensors[split] = ((pixels - MEAN) / STD, torch.from_numpy(digits.target[ids]))
    return (*tensors["train"], *tensors["val"])


class TensorLoader:
    """Batches of an in-memory tensor data set, in order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


def read_out(encoder: torch.nn.Module, data, probe: bool) -> dict:
    train_x, train_y, test_x, test_y = data
    features = {}
    result = {}
    for pooling in ("cls", "mean"):
        tr = extract_features(encoder, TensorLoader(train_x, train_y), pooling)
        te = extract_features(encoder, TensorLoader(test_x, test_y), pooling)
        features[pooling] = (tr, te)
        result[f"knn_{pooling}"] = 100 * knn_accuracy(tr[0], tr[1], te[0], te[1])
    if probe:
        tr, te = features["cls"]
        result["probe_cls"] = 100 * linear_probe_accuracy(tr[0], tr[1], te[0], te[1], epochs=100)
    return result


def encoder_from_checkpoint(path: str) -> VisionTransformer:
    encoder = VisionTransformer(**ENCODER)
    encoder.load_state_dict(encoder_state_dict(load_run_checkpoint(path)), strict=True)
    return encoder


def pretrain(config: str, work_dir: str, seed: int) -> float:
    command = [sys.executable, osp.join(ROOT, "tools/train.py"), config, "--work-dir", work_dir,
               "--cfg-options", f"randomness.seed={seed}"]
    start = time.perf_counter()
    with open(osp.join(work_dir + ".log"), "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
    return time.perf_counter() - start


def cpu_name() -> str:
    """Model name of the first CPU in /proc/cpuinfo, or the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"


def paired_difference(values: list[float], control: list[float]) -> str:
    """Return mean paired difference with a 95 % t confidence interval."""
    from scipy import stats

    diff = np.asarray(values) - np.asarray(control)
    if len(diff) < 2:
        return f"{diff.mean():+.1f}"
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    return f"{diff.mean():+.1f} [{diff.mean() - half:+.1f}, {diff.mean() + half:+.1f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Equal-compute study of MAE and MI-MAE variants on digits")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method")
    parser.add_argument("--work-dir", default="work_dirs/study", help="runs and raw results")
    parser.add_argument("--docs", default="docs", help="folder for the report and plots")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    data = write_digits(osp.join(args.work_dir, "digits"))
    results_path = osp.join(args.work_dir, "results.json")
    results = json.load(open(results_path)) if osp.exists(results_path) else {}
    started = time.perf_counter()
    trained = 0

    for seed in range(args.seeds):
        key = f"random init/{seed}"
        if key not in results:
            torch.manual_seed(seed)
            results[key] = dict(final=read_out(VisionTransformer(**ENCODER), data, probe=True))
        for method in args.methods:
            key = f"{method}/{seed}"
            if key in results:
                continue  # finished in an earlier invocation
            run_dir = osp.join(args.work_dir, method.replace(" ", "_").replace("(", "").replace(")", ""), str(seed))
            os.makedirs(osp.dirname(run_dir), exist_ok=True)
            seconds = pretrain(METHODS[method], run_dir, seed)
            trained += 1
            curve = {}
            for step in (100, 200, 300, 400, 500):
                encoder = encoder_from_checkpoint(osp.join(run_dir, f"iter_{step}.pth"))
                curve[step] = read_out(encoder, data, probe=(step == 500))
            with open(osp.join(run_dir, "loss_trace.json")) as f:
                trace = json.load(f)
            results[key] = dict(final=curve[500], curve=curve, seconds=seconds, trace=trace[::10])
            print(f"{key}: k-NN {curve[500]['knn_cls']:.1f} %, probe {curve[500]['probe_cls']:.1f} % "
                  f"({seconds:.0f} s)", flush=True)
            with open(results_path, "w") as f:
                json.dump(results, f)
    with open(results_path, "w") as f:
        json.dump(results, f)
    write_report(results, args, time.perf_counter() - started, trained)


def curve_point(curve: dict, step: int) -> dict:
    """Read-out at ``step``; keys are strings once results went through JSON."""
    return curve[str(step)] if str(step) in curve else curve[step]


def write_report(results: dict, args, seconds: float, trained: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = range(args.seeds)
    names = ["random init", *args.methods]
    rows = ["| method | k-NN (cls) | k-NN (mean) | linear probe (cls) | k-NN vs control | probe vs control "
            "| k-NN vs MAE |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        finals = [results[f"{name}/{s}"]["final"] for s in seeds]
        knn = [f["knn_cls"] for f in finals]
        knn_mean = [f["knn_mean"] for f in finals]
        probe = [f["probe_cls"] for f in finals]
        if CONTROL in args.methods and name != CONTROL:
            control = [results[f"{CONTROL}/{s}"]["final"] for s in seeds]
            d_knn = paired_difference(knn, [c["knn_cls"] for c in control])
            d_probe = paired_difference(probe, [c["probe_cls"] for c in control])
        else:
            d_knn = d_probe = "—"
        d_mae = "—"
        if "MAE" in args.methods and name != "MAE":
            d_mae = paired_difference(knn, [results[f"MAE/{s}"]["final"]["knn_cls"] for s in seeds])
        rows.append(f"| {name} | {mean_std(knn)} | {mean_std(knn_mean)} | {mean_std(probe)} | {d_knn} | {d_probe} "
                    f"| {d_mae} |")

    steps = [100, 200, 300, 400, 500]
    curves = {name: np.array([[curve_point(results[f"{name}/{s}"]["curve"], t)["knn_cls"] for t in steps]
                              for s in seeds]) for name in args.methods}
    rows += ["", "k-NN (cls) after each 100 steps, mean ± std over seeds:", "",
             "| method | " + " | ".join(f"{t * VIEWS_PER_STEP // 1000}k views" for t in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for name in args.methods:
        rows.append(f"| {name} | " + " | ".join(mean_std(list(col)) for col in curves[name].T) + " |")

    # One color per method in both figures, whichever methods a panel shows.
    colors = {name: f"C{i}" for i, name in enumerate(METHODS)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in args.methods:
        accs = curves[name]
        views = [t * VIEWS_PER_STEP / 1000 for t in steps]
        ax.errorbar(views, accs.mean(0), yerr=accs.std(0, ddof=1) if len(accs) > 1 else None, label=name, capsize=2,
                    color=colors[name])
    floor = np.mean([results[f"random init/{s}"]["final"]["knn_cls"] for s in seeds])
    ax.axhline(floor, color="gray", linestyle="--", label="random init")
    ax.set_xlabel("encoder views processed (thousands)")
    ax.set_ylabel("k-NN top-1 (%), cls token")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(osp.join(args.docs, "study_knn.png"), dpi=120)

    terms = ["loss_rec", "infonce", "club_estimate", "loss_q"]
    fig, axes = plt.subplots(1, len(terms), figsize=(14, 3.2))
    for ax, term in zip(axes, terms):
        for name in args.methods:
            # Mean over seeds of the traced values (every 10th iteration of each run).
            series = [{r["iter"]: r[term] for r in results[f"{name}/{s}"]["trace"] if term in r} for s in seeds]
            iters = sorted(set.intersection(*(set(d) for d in series)))
            if iters:
                ax.plot(iters, [np.mean([d[i] for d in series]) for i in iters], label=name, color=colors[name])
        ax.set_title(f"{term} (mean of {len(seeds)} seeds)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(osp.join(args.docs, "study_losses.png"), dpi=100)

    command = "python tools/study_equal_compute.py " + " ".join(sys.argv[1:])
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    pretrain_minutes = sum(results[f"{name}/{s}"]["seconds"] for name in args.methods for s in seeds) / 60
    with open(osp.join(args.docs, "study_table.md"), "w") as f:
        f.write("\n".join(rows) + "\n\n")
        f.write(f"Command: `{command.strip()}`; machine: {machine}; pretraining {pretrain_minutes:.0f} min "
                f"over {len(args.methods) * len(seeds)} runs; this invocation trained {trained} of them "
                f"in {seconds / 60:.0f} min.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
