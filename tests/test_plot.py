import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from cgan_keras import plot

ROOT = Path(__file__).resolve().parents[1]
HEADER = "epoch,step,d_loss,g_loss,label_accuracy,fid\n"
ERROR = "python -m cgan_keras.plot: error: "


def write_history(path, rows):
    path.write_text(HEADER + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_history_draws_one_panel_per_kind_of_figure_that_has_numbers(tmp_path):
    losses_only = write_history(tmp_path / "a.csv", [(0, 100, 1.2, 0.8, "", ""), (1, 200, 1.1, 0.9, "", "")])
    evaluated = write_history(tmp_path / "b.csv", [(0, 100, 1.2, 0.8, "nan", "nan"), (1, 200, 1.1, 0.9, 0.5, "nan")])
    history = plot.read_history(evaluated)
    np.testing.assert_array_equal(history["step"], [100, 200])
    assert np.isnan(history["label_accuracy"][0]) and history["label_accuracy"][1] == 0.5
    heights = [
        image.imread(plot.save_history_plot(plot.read_history(csv), tmp_path / f"{csv.stem}.png")).shape[0]
        for csv in (losses_only, evaluated)
    ]
    assert heights == [220, 440]  # losses; losses and label accuracy (no FID: only NaN)


def test_history_without_rows_is_an_error(tmp_path):
    with pytest.raises(plot.HistoryError, match="has no rows"):
        plot.read_history(write_history(tmp_path / "history.csv", []))
    with pytest.raises(plot.HistoryError, match="does not exist"):
        plot.read_history(tmp_path / "missing.csv")
    (tmp_path / "latin1.csv").write_bytes(HEADER.encode() + b"0,100,1.2,0.8,\xe9,\n")
    with pytest.raises(plot.HistoryError, match="latin1.csv is not a CSV file of UTF-8 text"):
        plot.read_history(tmp_path / "latin1.csv")


def test_progress_puts_the_first_the_last_and_evenly_spaced_grids_side_by_side(tmp_path):
    for step in range(10):
        grid = np.full((5, 8, 4), 1.0, "float32")
        grid[..., 0] = step / 10  # each grid's red channel says which it is
        image.imsave(tmp_path / f"step_{step:06d}.png", grid)
    mosaic = image.imread(plot.save_progress(tmp_path, tmp_path / "progress.png", count=3))
    assert mosaic.shape == (5, 3 * 8 + 2 * 4, 4)
    reds = [mosaic[0, column, 0] for column in (0, 12, 24)]
    np.testing.assert_allclose(reds, [0.0, 0.4, 0.9], atol=1 / 255)
    assert plot.save_progress(tmp_path / "empty", tmp_path / "none.png") is None
    (tmp_path / "step_000000.png").write_bytes(b"not a png")
    with pytest.raises(plot.HistoryError, match="step_000000.png is not a readable PNG image: not a PNG file"):
        plot.save_progress(tmp_path, tmp_path / "progress.png", count=3)


def run_plot(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cgan_keras.plot", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_the_command_redraws_a_run_and_names_what_is_missing(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    image.imsave(run / "samples" / "step_000001.png", np.zeros((5, 8, 4), "float32"))
    result = run_plot("run", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        f"{ERROR}run/history.csv does not exist (train.py writes it every --log-every steps).\n"
    )
    write_history(run / "history.csv", [(0, 100, 1.2, 0.8, "", "")])
    result = run_plot("run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run / "history.png").exists() and (run / "samples" / "progress.png").exists()
    result = run_plot("nowhere", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"{ERROR}RUN_DIR nowhere is not a directory.\n"
    result = run_plot("run", "--dpi", "3", cwd=tmp_path)  # argparse's own errors carry the same name
    assert result.returncode == 2 and result.stderr.startswith(f"{ERROR}unrecognized arguments: --dpi 3")
