"""`lstmmt plot-attention`: one translation's attention as a heatmap with the pieces as tick labels."""

from __future__ import annotations

from pathlib import Path

from lstmmt.errors import UserError
from lstmmt.plot import save_png
from lstmmt.rundir import write_output
from lstmmt.translator import Alignment


def plot_attention(alignment: Alignment, output: Path) -> Path:
    """Draw target pieces (rows) against source pieces (columns) into a PNG at `output`
    (written as rundir.write_output writes: whole once complete, or streamed into a FIFO or device)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot-attention needs matplotlib: pip install 'lstmmt[plot]' "
                        "(in a checkout: pip install -e '.[plot]')") from None
    rows, columns = len(alignment.target), len(alignment.source)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * columns + 1.5), max(3.0, 0.4 * rows + 1.2)))
    image = axes.imshow(alignment.weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(columns), alignment.source, rotation=90)
    axes.set_yticks(range(rows), alignment.target)
    axes.set_xlabel("source pieces")
    axes.set_ylabel("target pieces")
    figure.colorbar(image, ax=axes, fraction=0.05)
    figure.tight_layout()
    output = Path(output)
    write_output(output, lambda target: save_png(figure, target, dpi=120))
    plt.close(figure)
    return output
