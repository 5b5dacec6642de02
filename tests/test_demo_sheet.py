"""The demo's contact sheet: header row naming the columns, readable labels on dark strips
(real MuJoCo renders, real PIL drawing)."""

import numpy as np
import pytest
from PIL import Image

from twin.env import TwinEnv
from twinrank.demo import FRAME, HEADER_FONT_SIZE, contact_sheet, run_twin_demo

W, H = FRAME
LABEL_W = 150


def _bright(a: np.ndarray, level: int = 150) -> np.ndarray:
    return (a >= level).all(axis=-1)


def _vertical_extent(mask: np.ndarray) -> int:
    ys = np.flatnonzero(mask.any(axis=1))
    return 0 if ys.size == 0 else int(ys[-1] - ys[0] + 1)


@pytest.fixture(scope="module")
def frames():
    env = TwinEnv("reach")
    env.reset(seed=0)
    cams = env.camera_names()
    out = [np.asarray(env.render_camera(cam, W, H)) for cam in cams]
    env.close()
    return out


def test_contact_sheet_has_header_row_and_readable_labels(frames):
    img = frames[0]
    tiles = [
        ("nominal\ncam_left, first frame", "seed 0: OK", img),
        ("light_intensity\ncam_left, first frame", "seed 0: FAIL", frames[-1]),
    ]
    sheet = np.asarray(contact_sheet([("reach", tiles), ("mug_to_sink", tiles)], label_w=LABEL_W).convert("RGB"))
    # The first tile sits below a header row (old sheets pasted it at y = 0).
    y0 = next(y for y in range(sheet.shape[0] - H) if np.array_equal(sheet[y, LABEL_W : LABEL_W + W], img[0]))
    assert np.array_equal(sheet[y0 : y0 + H, LABEL_W : LABEL_W + W], img)
    assert y0 >= 2 * HEADER_FONT_SIZE  # two header lines: condition, camera and frame
    assert sheet.shape[0] > y0 + 2 * H
    # Header: light text on a dark band, over two lines.
    header = sheet[:y0, LABEL_W : LABEL_W + W]
    assert np.median(header) < 40 and _bright(header).sum() > 100
    assert _vertical_extent(_bright(header)) > 1.5 * HEADER_FONT_SIZE
    # Label strip under each tile: dark, with a green (OK) and a red (FAIL) label.
    strip_ok = sheet[y0 + H : y0 + H + 20, LABEL_W : LABEL_W + W].astype(int)
    x1 = sheet.shape[1] - W
    strip_fail = sheet[y0 + H : y0 + H + 20, x1:].astype(int)
    assert np.median(strip_ok) < 30 and np.median(strip_fail) < 30
    assert ((strip_ok[..., 1] > 180) & (strip_ok[..., 0] < 160)).sum() > 30
    assert ((strip_fail[..., 0] > 200) & (strip_fail[..., 1] < 140)).sum() > 30
    # Task names in the left column, in a font large enough to read: "mug_to_sink" (second row)
    # spans 15 px from ascender to descender at 16 px, 10 px in Pillow's small default font.
    assert _bright(sheet[y0 : y0 + H, :LABEL_W]).sum() > 60
    second = _bright(sheet[y0 + H :, :LABEL_W])
    assert second.sum() > 60 and _vertical_extent(second) >= 13


def test_demo_writes_sheet_with_header(tmp_path):
    run_twin_demo(tmp_path, tasks=["reach"])
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png").convert("RGB"))
    band = sheet[: 2 * HEADER_FONT_SIZE]
    assert sheet.shape[0] > H + 2 * HEADER_FONT_SIZE
    assert np.median(band) < 40 and _bright(band).sum() > 500  # a dark header row with column names
