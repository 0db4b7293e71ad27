"""The Å axis on top of FSC plots is readable: no two labels overlap, no offset text, at any figure width."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from spa.plots import angstrom_axis  # noqa: E402


@pytest.mark.parametrize("width", [3.0, 4.0, 10.0])
@pytest.mark.parametrize("pixel", [1.0, 1.5, 4.0])
def test_angstrom_labels_do_not_overlap(width, pixel):
    box = 64
    fig, ax = plt.subplots(figsize=(width, 3))
    s = np.arange(box // 2 + 1) / (box * pixel)
    ax.plot(s, np.linspace(1, 0, s.size))
    angstrom_axis(ax, box * pixel)
    fig.canvas.draw()
    top = [a for a in fig.axes if a is not ax][0]
    labels = [t for t in top.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3  # still says where the resolutions are
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, [t.get_text() for t in labels]
    values = [float(t.get_text()) for t in labels]
    assert values == sorted(values, reverse=True) and min(values) >= 2 * pixel * 0.999
    assert not top.xaxis.get_offset_text().get_text()
    plt.close(fig)
