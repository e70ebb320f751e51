"""lib/chessboard.py: rendered boards carry their ground truth; the detector (OpenCV's calls)
finds corners to a few hundredths of a pixel, in the order of board_points, whatever the
view; and bad input is refused by name."""

import math

import cv2
import numpy as np
import pytest
import torch

from lib.calibration import project_points, rodrigues, rotation_to_rodrigues
from lib.chessboard import (
    BLACK,
    WHITE,
    board_points,
    board_views,
    canonical_order,
    detect_corners,
    random_board_poses,
    render_chessboard,
)

K = torch.tensor([[812.0, 0, 331.5], [0, 796.0, 236.25], [0, 0, 1]], dtype=torch.float64)
DIST = torch.tensor([-0.27, 0.11, 8e-4, -1.2e-3, -0.03], dtype=torch.float64)
SIZE = (640, 480)


def test_board_points_layout():
    X = board_points((9, 6), 25.0)
    assert X.shape == (54, 3) and X.dtype == torch.float64
    assert torch.equal(X[0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(X[1], torch.tensor([25.0, 0, 0], dtype=torch.float64))  # along a row
    assert torch.equal(X[9], torch.tensor([0.0, 25, 0], dtype=torch.float64))  # next row
    assert torch.equal(X[53], torch.tensor([200.0, 125, 0], dtype=torch.float64))


def test_rendered_squares_have_their_colours():
    """Independent of the detector: the centre of every square, projected, has the square's
    colour (black where (a + b) is even, with a, b the square's column and row)."""
    rvec, tvec = torch.tensor([0.2, -0.3, 0.4]), torch.tensor([-90.0, -50.0, 500.0])
    image = render_chessboard(K, DIST, rvec, tvec, blur=0.0)
    for a in range(10):
        for b in range(7):
            centre = torch.tensor([[(a - 0.5) * 25, (b - 0.5) * 25, 0.0]], dtype=torch.float64)
            x, y = project_points(centre, rvec, tvec, K, DIST)[0].round().long().tolist()
            want = BLACK if (a + b) % 2 == 0 else WHITE
            assert abs(image[y, x] / 255 - want) < 0.02, (a, b)


@pytest.mark.parametrize("roll_deg", [-170, -90, 0, 45, 135, 180])
def test_detected_corners_match_the_truth_in_board_order(roll_deg):
    """Whatever the in-plane rotation, corner k is board_points()[k]: the RMS distance to the
    true projection is below 0.05 px (measured: about 0.025 px with supersample 8, blur 1,
    noise 2 grey levels) and the worst corner below 0.2 px."""
    R = rodrigues(torch.tensor([0.25, -0.2, 0.0], dtype=torch.float64)) @ rodrigues(
        torch.tensor([0.0, 0.0, math.radians(roll_deg)], dtype=torch.float64))
    rvec = rotation_to_rodrigues(R)
    tvec = torch.tensor([0.0, 0.0, 520.0], dtype=torch.float64) - R @ board_points().mean(0)
    image = render_chessboard(K, DIST, rvec, tvec, noise=2.0, seed=roll_deg % 7)
    (found,) = detect_corners([image])
    truth = project_points(board_points(), rvec, tvec, K, DIST).numpy()
    err = np.linalg.norm(found - truth, axis=1)
    assert found.shape == (54, 2) and found.dtype == np.float32
    assert np.sqrt((err**2).mean()) < 0.05 and err.max() < 0.2


def view(roll, pattern=(9, 6)):
    R = rodrigues(torch.tensor([0.2, 0.1, roll], dtype=torch.float64))
    tvec = torch.tensor([0.0, 0.0, 520.0], dtype=torch.float64) - R @ board_points(pattern).mean(0)
    rvec = rotation_to_rodrigues(R)
    image = render_chessboard(K, DIST, rvec, tvec, pattern=pattern)
    return image, project_points(board_points(pattern), rvec, tvec, K, DIST).numpy()


def test_symmetric_board_order_flips_with_the_view():
    """An 8 x 6 board looks the same turned by 180 degrees: OpenCV's order then follows the
    image, so two views 180 degrees apart disagree about which corner is corner 0."""
    agree = []
    for roll in (0.0, math.pi):
        image, truth = view(roll, (8, 6))
        (raw,) = detect_corners([image], pattern=(8, 6), canonical=False)
        agree.append(bool(np.abs(raw - truth).max() < 1))
    assert agree.count(True) == 1


def test_canonical_order_undoes_reversal_and_mirroring():
    for roll in (0.0, 2.0, math.pi):
        image, truth = view(roll)
        (found,) = detect_corners([image], canonical=False)
        grid = found.reshape(6, 9, 2)
        for scrambled in (found, found[::-1], grid[:, ::-1].reshape(-1, 2),
                          grid[::-1].reshape(-1, 2)):
            fixed = canonical_order(np.ascontiguousarray(scrambled), image, (9, 6))
            assert np.abs(fixed - truth).max() < 0.5


def test_missing_pattern():
    blank = np.full((480, 640), 128, np.uint8)
    board = render_chessboard(K, DIST, torch.tensor([0.1, 0.1, 0.0]),
                              torch.tensor([-100.0, -60.0, 500.0]))
    with pytest.raises(ValueError, match=r"images\[1\]: no 9x6 chessboard found"):
        detect_corners([board, blank])
    found = detect_corners(np.stack([board, blank]), on_missing="none")
    assert found[0].shape == (54, 2) and found[1] is None
    # a board cut by the image border is not found either
    cut = render_chessboard(K, DIST, torch.tensor([0.1, 0.1, 0.0]),
                            torch.tensor([150.0, -60.0, 500.0]))
    assert detect_corners([cut], on_missing="none") == [None]


def test_detect_corners_accepts_bgr_and_tensors():
    gray = render_chessboard(K, DIST, torch.tensor([0.1, -0.1, 0.2]),
                             torch.tensor([-100.0, -60.0, 500.0]))
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    a, b, c = detect_corners([gray, bgr, torch.from_numpy(gray)])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_random_poses_fit_and_views_are_exact():
    r, t = random_board_poses(K, DIST, SIZE, 12, seed=3)
    obj, img = board_views(K, DIST, r, t)
    assert len(obj) == len(img) == 12
    for v in range(12):
        inside = (img[v] > 15) & (img[v] < torch.tensor([624.0, 464.0]))
        assert bool(inside.all())
        torch.testing.assert_close(img[v], project_points(obj[v], r[v], t[v], K, DIST), rtol=0,
                                   atol=1e-12)
    noisy = board_views(K, DIST, r, t, noise=0.3, seed=1)[1]
    spread = torch.cat([n - e for n, e in zip(noisy, img, strict=True)]).std()
    assert 0.27 < float(spread) < 0.33  # 1296 samples of N(0, 0.3^2)


IMG = np.zeros((48, 64), np.uint8)
BAD_CALLS = [
    (detect_corners, dict(images=IMG), TypeError, "list of images"),
    (detect_corners, dict(images="frame.png"), TypeError, "images"),
    (detect_corners, dict(images=[IMG.astype(np.float32)]), TypeError, "uint8"),
    (detect_corners, dict(images=[np.zeros((4, 4, 4), np.uint8)]), ValueError, "grey"),
    (detect_corners, dict(images=[[1, 2]]), TypeError, r"images\[0\]"),
    (detect_corners, dict(images=[IMG], pattern=(9,)), TypeError, "pattern"),
    (detect_corners, dict(images=[IMG], pattern=(1, 6)), ValueError, "columns"),
    (detect_corners, dict(images=[IMG], pattern=(9.0, 6)), TypeError, "columns"),
    (detect_corners, dict(images=[IMG], pattern=(8, 6)), ValueError, "180 degrees"),
    (detect_corners, dict(images=[IMG], on_missing="skip"), ValueError, "on_missing"),
    (detect_corners, dict(images=[IMG], canonical="yes"), TypeError, "canonical"),
    (render_chessboard, dict(K=np.eye(2), dist=None, R=np.zeros(3), t=[0, 0, 500]),
     ValueError, "K must have shape"),
    (render_chessboard, dict(K=K, dist=None, R=np.ones((3, 3)), t=[0, 0, 500]), ValueError,
     "rotation matrix"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, math.nan]), ValueError,
     "finite"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, 500], square_size=0),
     ValueError, "square_size"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, 500],
                             image_size=(640, 480.5)), TypeError, "height"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, 500], supersample=0),
     ValueError, "supersample"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, 500], noise=-1),
     ValueError, "noise"),
    (render_chessboard, dict(K=K, dist=None, R=np.zeros(3), t=[0, 0, 500], blur="1"),
     TypeError, "blur"),
    (render_chessboard, dict(K=K, dist=[0.1], R=np.zeros(3), t=[0, 0, 500]), ValueError,
     "4 or 5 coefficients"),
    (random_board_poses, dict(K=K, dist=None, image_size=SIZE, count=0), ValueError, "count"),
    (random_board_poses, dict(K=K, dist=None, image_size=SIZE, count=3, distance=(5, 10)),
     ValueError, "no board pose fits"),
    (board_views, dict(K=K, dist=None, rvecs=np.zeros((2, 3)), tvecs=np.zeros((3, 3))),
     ValueError, "same length"),
    (board_points, dict(pattern=(9, 6), square_size=-1), ValueError, "square_size"),
]


@pytest.mark.parametrize("fn, kwargs, error, message", BAD_CALLS,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_input_is_refused(fn, kwargs, error, message):
    with pytest.raises(error, match=message):
        fn(**kwargs)
