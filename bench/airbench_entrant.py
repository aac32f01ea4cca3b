"""airbench94 as an entrant: trained by its own recipe (PyPI ``airbench`` 0.1.8, unchanged), scored by its own
evaluation, and exported to ONNX with torch's exporter, for ``dawnpipe import`` to judge beside a family.

    python bench/airbench_entrant.py --data ../shared/data/cifar10-jpeg.tar.gz --source airbench-0.1.8.tar.gz \\
        --device cpu --seed 0 --out docs/results/entrants/airbench94-s0

Writes into ``--out``: ``airbench94.onnx`` (NCHW float input, pixels / 255 normalised by airbench's CIFAR_MEAN and
CIFAR_STD: the contract to import it with, printed at the end), ``airbench.json`` (its own accuracy without TTA and
with its 6 views, its own timings, the data and versions) and ``airbench-logits.npz`` (its own test logits at
tta_level 0 and 2, for the import's agreement check). What bench/airbench.py adapts to run it (data files from
dawnpipe's data; on a CPU, CUDA calls made CPU calls and half precision kept fp32) is all that is adapted; on a CPU
the warm-up run airbench times after is skipped (this script measures accuracy, not speed).

    python bench/airbench_entrant.py check RUN_DIR airbench-logits.npz DATA   # after `dawnpipe import`

compares the imported model's logits and accuracy with airbench's own evaluation of the same weights (no TTA and
its 6 views, the latter through dawnpipe's ``airbench94`` mode).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench as bench_airbench  # noqa: E402  (this folder's bench/airbench.py, not the package)

CONTRACT = {"layout": "NCHW", "input_range": "0-1"}  # mean and std are read from airbench's own constants


def check(run_dir: Path, logits_file: Path, data: str) -> dict:
    """The imported model against airbench's own evaluation of the same weights: logits (plain, and its 6 views as
    dawnpipe's ``airbench94`` mode takes them) and top-1 accuracy on the same test images, fp32."""
    import numpy as np

    from dawnpipe.infer.backends import load
    from dawnpipe.infer.modes import run_mode
    from dawnpipe.train.data import load_cifar

    own = np.load(logits_file)
    cifar = load_cifar(data)
    if not np.array_equal(cifar.test_y, own["labels"]):
        raise SystemExit("error: the data's test labels are not the ones airbench was evaluated on; pass its --data")
    out = {}
    with load(run_dir / "model-fp32.onnx") as model:
        for level, mode in ((0, "none"), (2, "airbench94")):
            got = run_mode(model, cifar.test_x, mode).logits
            want = own[f"tta{level}"]
            out[mode] = {
                "max_abs_logit_diff": float(np.abs(got - want).max()),
                "dawnpipe_accuracy": float((got.argmax(1) == cifar.test_y).mean()),
                "airbench_accuracy": float((want.argmax(1) == cifar.test_y).mean()),
                "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
                "images": int(len(want)),
            }
    return {"imported": str(run_dir), "against": str(logits_file), "backend": "onnxruntime CPU fp32", **out}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "check":  # python bench/airbench_entrant.py check RUN LOGITS DATA
        result = check(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        print(json.dumps(result, indent=2))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--source", default=None, help="airbench-0.1.8.tar.gz (sha256 checked) or its folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="1,024 training images, 1 epoch: the plumbing only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data, out = str(Path(args.data).resolve()), args.out.resolve()
    source = str(Path(args.source).resolve()) if args.source else None
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch

    airbench, vision = bench_airbench.import_airbench(source)
    utils = sys.modules["airbench.utils"]
    hyp = sys.modules["airbench.lib_airbench94"].hyp
    work = Path(tempfile.mkdtemp(prefix="airbench-entrant-"))
    described = bench_airbench.write_data(data, work, smoke=args.smoke)
    os.chdir(work)  # airbench opens cifar10/*.pt relative to its working directory
    epochs = 1 if args.smoke else hyp["opt"]["train_epochs"]
    plumbing = (
        bench_airbench.cpu_plumbing(airbench) if args.device == "cpu" else contextlib.nullcontext(airbench.CifarLoader)
    )
    torch.manual_seed(args.seed)
    with plumbing as loader_class:
        loader = loader_class("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True)
        printed = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            model = airbench.train94(loader, epochs=epochs, run=args.seed)
        wall = time.perf_counter() - started
        final = bench_airbench._final_row(printed.getvalue())
        test_loader = loader_class("cifar10", train=False, batch_size=2000)
        logits = {f"tta{level}": utils.infer(model, test_loader, level).float().cpu().numpy() for level in (0, 2)}
        labels = test_loader.labels.cpu().numpy()
        own = {k: float((v.argmax(1) == labels).mean()) for k, v in logits.items()}
    model = model.float().eval()  # fp32 weights for the exported file (on a GPU airbench trains in fp16)
    path = out / "airbench94.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        example = torch.zeros(2, 3, 32, 32, device=next(model.parameters()).device)
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    np.savez_compressed(out / "airbench-logits.npz", labels=labels, **logits)
    mean = [float(v) for v in utils.CIFAR_MEAN]
    std = [float(v) for v in utils.CIFAR_STD]
    record = {
        "benchmark": "airbench94 (PyPI airbench 0.1.8, recipe unchanged) trained as an entrant",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torchvision": vision,
        "seed": args.seed,
        "epochs": epochs,
        "smoke": args.smoke,
        "data": described,
        "own_evaluation": {"tta_level_0": own["tta0"], "tta_level_2": own["tta2"], "test_images": int(len(labels))},
        "own_final_row": final,
        "wall_seconds": wall,
        "statistic": "airbench's own evaluate() on the test images dawnpipe's data holds, fp32 on a CPU",
        "onnx": {"file": path.name, "exporter": "torch.onnx.export (TorchScript), opset 17, dynamic batch"},
        "contract": {**CONTRACT, "mean": mean, "std": std},
        "import_command": f"dawnpipe import {path} --data DATA --name airbench94-s{args.seed} --layout NCHW "
        f"--input-range 0-1 --mean {','.join(map(str, mean))} --std {','.join(map(str, std))}",
    }
    (out / "airbench.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
