import numpy as np
import pytest
from matplotlib.image import imread

from sycojax.eval import plot_curves


def test_plot_curves_writes_png_with_both_lines(tmp_path):
    path = tmp_path / "sub" / "kl.png"
    out = plot_curves(
        {"lora": [(0, 1.0), (10, 0.3), (20, 0.1)], "memory": [(20, 0.5), (0, 1.0), (10, 0.7)]},
        path,
        title="held-out KL",
        ylabel="KL (nats)",
        logy=True,
    )
    assert out == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(str(path))
    assert img.shape[:2] == (400, 640)
    rgb = img[..., :3]
    # matplotlib's default cycle: C0 blue (31,119,180) and C1 orange (255,127,14) must both appear
    for colour in ([31, 119, 180], [255, 127, 14]):
        close = np.all(np.abs(rgb * 255 - np.array(colour)) < 30, axis=-1)
        assert close.sum() > 50, f"no line drawn in colour {colour}"


def test_plot_curves_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="at least one curve"):
        plot_curves({}, tmp_path / "x.png", "t", "y")
    with pytest.raises(ValueError, match="'a' has no points"):
        plot_curves({"a": []}, tmp_path / "x.png", "t", "y")
