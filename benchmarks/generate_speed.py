"""Generation speed: `DigitSampler.from_gan`, the exported SavedModel and ONNX, and `infer.py` as a process.

Examples:

    python benchmarks/generate_speed.py                 # 1, 64 and 4,096 digits; 3 runs of each process (~2 min)
    python benchmarks/generate_speed.py --quick         # smoke test: fewer calls, 1 run of each process
    python benchmarks/generate_speed.py --counts 1 4096 --repeats 20

The generator is the default one, untrained (speed does not depend on the
weights), built by `cgan_keras.training.build_gan` and exported with
`cgan_keras.export.export_generator` and `export_onnx` to a temporary
directory. For each count of digits it times `sampler(digits, seed=0)` for
three `cgan_keras.sampler.DigitSampler`s: (a) `from_gan` (the model in
memory), (b) `from_saved_model` (its
`serving_default`) and (c) `from_onnx` (onnxruntime); each draws the noise
and calls the network in chunks of 1,024 digits, returning numpy images in
[0, 1]. The median over `--repeats` calls (at least `--seconds` long) is
reported. MFU divides the generator's forward FLOPs (counted from its layer
shapes) per second by a float32 matmul's, measured in the same run.
`infer.py` is timed as a whole process on both exports.
"""

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from cgan_keras import cli  # noqa: E402
from cgan_keras.config import TrainConfig  # noqa: E402
from cgan_keras.export import export_generator, export_onnx  # noqa: E402
from cgan_keras.sampler import DigitSampler  # noqa: E402
from cgan_keras.training import build_gan  # noqa: E402


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 64, 4096], help="digits per call")
    parser.add_argument("--repeats", type=int, default=10, help="least timed calls per row (the median is reported)")
    parser.add_argument("--seconds", type=float, default=2.0, help="least time spent timing each row")
    parser.add_argument("--process-runs", type=int, default=3, help="runs of each subprocess (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 calls per row, 1 run of each process")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.process_runs = 3, 0.0, 1
    if min(args.counts + [args.repeats, args.process_runs]) < 1:
        parser.error("--counts, --repeats and --process-runs must be positive integers.")
    return args


def time_generation(gan, samplers, counts, peak, args):
    """Returns table rows: latency, images/s and MFU of each `DigitSampler` in `samplers` for each count."""
    flops_per_image = common.forward_flops(gan.generator)
    rows = []
    for count in counts:
        digits = np.arange(count, dtype=np.int32) % gan.num_classes
        paths = {name: functools.partial(sampler, digits, seed=0) for name, sampler in samplers.items()}
        baseline = None
        for name, function in paths.items():
            seconds, times = common.median_seconds(function, args.repeats, args.seconds, warmup=2)
            baseline = baseline or seconds
            rows.append(
                [
                    str(count),
                    name,
                    f"{seconds * 1e3:.2f}",
                    str(len(times)),
                    f"{count / seconds:.0f}",
                    f"{count * flops_per_image / seconds / 1e9:.2f}",
                    f"{count * flops_per_image / seconds / peak:.1%}",
                    f"{baseline / seconds:.2f}x",
                ]
            )
    return rows


def process_seconds(command, runs):
    """Median wall time of `command` run as a whole process from the repository root."""

    def run():
        subprocess.run(command, cwd=common.REPO_ROOT, check=True, capture_output=True)

    seconds, _ = common.median_seconds(run, runs, warmup=0)
    return seconds


def main(argv=None):
    args = parse_args(argv)
    print("\n".join(common.environment_lines()))
    peak = common.matmul_peak_flops()
    print(f"float32 matmul peak (fastest of 20 2048x2048 matmuls): {peak / 1e9:.1f} GFLOP/s")
    gan = build_gan(TrainConfig())
    print(f"generator forward: {common.forward_flops(gan.generator) / 1e6:.2f} MFLOP per image")
    with tempfile.TemporaryDirectory(prefix="generate_speed_") as temporary:
        exported = export_generator(gan, Path(temporary) / "generator")
        onnx_file = export_onnx(gan, Path(temporary) / "generator.onnx")
        print(f"ONNX file: {onnx_file.stat().st_size / 1e6:.2f} MB")
        for name, load in (("SavedModel", DigitSampler.from_saved_model), ("ONNX", DigitSampler.from_onnx)):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                load(exported if name == "SavedModel" else onnx_file)
                times.append(time.perf_counter() - start)
            print(f"{name} load: first {times[0]:.2f} s, reloads {statistics.median(times[1:]):.2f} s")
        samplers = {
            "DigitSampler.from_gan": DigitSampler.from_gan(gan),
            "SavedModel serving_default": DigitSampler.from_saved_model(exported),
            "ONNX (onnxruntime)": DigitSampler.from_onnx(onnx_file),
        }
        rows = time_generation(gan, samplers, args.counts, peak, args)
        print()
        common.print_table(
            ["digits", "path", "latency ms", "calls", "images/s", "GFLOP/s", "MFU", "speedup vs from_gan"], rows
        )
        infer = [sys.executable, "infer.py", "--digit", "7", "--out", str(Path(temporary) / "digit_7.png")]
        import_seconds = process_seconds([sys.executable, "-c", "import tensorflow"], args.process_runs)
        onnxruntime_seconds = process_seconds([sys.executable, "-c", "import onnxruntime"], args.process_runs)
        infer_seconds = process_seconds([*infer, "--model", str(exported)], args.process_runs)
        infer_onnx_seconds = process_seconds([*infer, "--model", str(onnx_file)], args.process_runs)
    print()
    common.print_table(
        [f"process (median of {args.process_runs})", "wall s", "beyond the runtime's import s"],
        [
            ['python -c "import tensorflow"', f"{import_seconds:.2f}", "-"],
            ['python -c "import onnxruntime"', f"{onnxruntime_seconds:.2f}", "-"],
            [
                "python infer.py --model <exported SavedModel> --digit 7",
                f"{infer_seconds:.2f}",
                f"{infer_seconds - import_seconds:.2f}",
            ],
            [
                "python infer.py --model <exported .onnx> --digit 7",
                f"{infer_onnx_seconds:.2f}",
                f"{infer_onnx_seconds - onnxruntime_seconds:.2f}",
            ],
        ],
    )
    print("\nlatency: median seconds per call, noise sampling and the copy to numpy included.")


if __name__ == "__main__":
    main()
