"""Pictures of a run: its curves (`history.png`) and its fixed samples over time (`samples/progress.png`).

`training.run` draws both at the end of every run, resumed or stopped ones
included; this command redraws them from a run directory's files.

Examples:

    python -m cgan_keras.plot saved_models/cgan     # writes history.png and samples/progress.png there
"""

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib import image
from matplotlib.figure import Figure

from cgan_keras import cli
from cgan_keras.artifacts import atomic_path, first_line

# Panels of history.png: a title and the history.csv columns drawn in it, when a column has a number.
PANELS = (
    ("losses", ("d_loss", "g_loss")),
    ("label accuracy (judge)", ("label_accuracy", "worst_class_accuracy")),
    ("FID (judge features)", ("fid", "fid_floor")),
)
PROGRESS_GRIDS = 6


PROG = "python -m cgan_keras.plot"  # what its messages start with, as `python -m cgan_keras.evaluate`'s


class HistoryError(ValueError):
    """A run's file that the pictures are drawn from is missing or unreadable: history.csv or a sample grid."""


def read_history(path):
    """Reads a `history.csv` (as `callbacks.HistoryCSV` writes it) into columns.

    Returns:
        `{column: float64 (rows,)}`, rows in file order; an empty or
        non-numeric cell is NaN (epochs without an evaluation log NaN).

    Raises:
        HistoryError: the file is missing, is not UTF-8 text, has no rows or no `step` column.
    """
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path} does not exist (train.py writes it every --log-every steps).")
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except UnicodeDecodeError as error:
        raise HistoryError(f"{path} is not a CSV file of UTF-8 text ({error.reason} at byte {error.start}).") from None
    if not rows or "step" not in rows[0]:
        raise HistoryError(f"{path} has no rows with a `step` column.")
    return {column: np.array([_number(row.get(column)) for row in rows]) for column in rows[0]}


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def save_history_plot(history, path):
    """Draws the columns of `read_history` against the step, one panel per entry of `PANELS` that has data.

    Evaluated figures (NaN between evaluations) are drawn as points joined
    across the gaps. Written atomically to the PNG file `path`.

    Raises:
        HistoryError: no column of `PANELS` has a number.
    """
    panels = [
        (title, [(column, history[column]) for column in columns if np.isfinite(history.get(column, [])).any()])
        for title, columns in PANELS
    ]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        drawable = ", ".join(column for _, columns in PANELS for column in columns)
        raise HistoryError(f"history.csv has a number in none of the columns drawn ({drawable}).")
    figure = Figure(figsize=(6, 2.2 * len(panels)), dpi=100)
    for axes, (title, series) in zip(figure.subplots(len(panels), 1, squeeze=False).flat, panels, strict=True):
        for column, values in series:
            drawn = np.isfinite(values)
            marker = "o" if drawn.sum() < len(values) or drawn.sum() <= 20 else None
            axes.plot(history["step"][drawn], values[drawn], marker=marker, markersize=3, label=column)
        axes.set_title(title, fontsize=9)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    figure.axes[-1].set_xlabel("step")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)


def save_progress(samples, path, count=PROGRESS_GRIDS):
    """Puts `count` of the sample grids side by side: the first, the last, and evenly spaced ones between.

    The grids (`samples/step_*.png`, each titled with its step) show the same
    noise and digits, so the row shows the generator learning. Their pixels
    are copied as they are, 4 white pixels apart, into the PNG file `path`.

    Returns:
        `path`, or `None` when `samples` holds no grid.
    """
    grids = sorted(Path(samples).glob("step_*.png"))
    if not grids:
        return None
    chosen = np.unique(np.linspace(0, len(grids) - 1, min(count, len(grids))).round().astype(int))
    tiles = [_read_grid(grids[index]) for index in chosen]
    height = max(tile.shape[0] for tile in tiles)
    gap = np.ones((height, 4, 4), "float32")
    row = []
    for tile in tiles:
        padded = np.ones((height, tile.shape[1], 4), "float32")
        padded[: tile.shape[0]] = tile
        row += [padded, gap]
    with atomic_path(path) as temporary:
        image.imsave(temporary, np.concatenate(row[:-1], axis=1), format="png")
    return Path(path)


def _read_grid(path):
    try:
        return image.imread(path)
    except (SyntaxError, ValueError, OSError) as error:  # Pillow's "not a PNG file" is a SyntaxError
        raise HistoryError(f"{path} is not a readable PNG image: {first_line(error)}") from None


def save_run_pictures(run_dir):
    """Writes `history.png` and `samples/progress.png` in `run_dir` from its files; returns the paths written.

    Raises:
        HistoryError: `run_dir/history.csv` is missing or empty, or a grid is unreadable.
    """
    run_dir = Path(run_dir)
    written = [save_history_plot(read_history(run_dir / "history.csv"), run_dir / "history.png")]
    progress = save_progress(run_dir / "samples", run_dir / "samples" / "progress.png")
    return written + ([progress] if progress else [])


def main(argv=None):
    parser = cli.make_parser(__doc__, prog=PROG)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a train.py --out directory")
    run_dir = Path(parser.parse_args(argv).run_dir)
    if not run_dir.is_dir():
        cli.fail(PROG, f"RUN_DIR {run_dir} is not a directory.")
    try:
        written = save_run_pictures(run_dir)
    except HistoryError as error:
        cli.fail(PROG, str(error))
    except OSError as error:
        cli.fail(PROG, f"cannot write in {run_dir}: {error.strerror}")
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
