"""How boxes are listed wherever predict and serve give them (CSV row, --json, the REST API's JSON): coordinates to
0.1 pixel, scores to 4 decimals, as the frame's own score."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.inference.outputs import Boxes
from medcad.inference.prediction import Prediction

LABELS = ["adenoma", "hyperplastic"]

box = st.tuples(
    st.floats(0, 500, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
    st.integers(0, len(LABELS) - 1),
)


def _prediction(rows: list) -> Prediction:
    boxes = np.array(rows, np.float64).reshape(-1, 6)
    boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]  # best first, as the detector gives them
    return Prediction("a.png", LABELS, (Boxes(LABELS, boxes, threshold=0.0),))


@settings(max_examples=60, deadline=None)
@given(st.lists(box, min_size=1, max_size=6))
def test_listed_boxes_keep_scores_to_four_decimals_everywhere(rows: list) -> None:
    pred = _prediction(rows)
    kept = pred.boxes.kept
    csv_boxes = json.loads(pred.row()["boxes"])
    for listed in (csv_boxes, pred.summary()["boxes"]):  # predict's CSV; --json and serve (the same summary)
        assert len(listed) == len(kept)
        for got, b in zip(listed, kept, strict=True):
            assert np.allclose(got[:4], b[:4], rtol=0, atol=0.05 + 1e-9)  # to 0.1 pixel
            assert [round(v, 1) for v in got[:4]] == got[:4]
            # cut to 4 decimals (a score a float's last bit under a 4-decimal value, as no float32 score is, reads it)
            assert -1e-12 <= b[4] - got[4] < 1e-4 + 1e-12 and round(got[4], 4) == got[4]
            assert got[5] == LABELS[int(b[5])]
    # the top box's listed score is the frame's score as the row gives it
    assert abs(csv_boxes[0][4] - pred.row()["score"]) <= 1e-4 + 1e-12


def test_close_scores_stay_apart() -> None:
    scores = [0.5495, 0.5431, 0.5312, 0.5208, 0.5102]  # all printed 0.5 when scores were rounded to 1 decimal
    pred = _prediction([[10.04, 20.06, 30.55, 40.0, s, 0] for s in scores])
    assert [b[4] for b in pred.summary()["boxes"]] == scores
    assert pred.summary()["boxes"][0][:4] == [10.0, 20.1, 30.6, 40.0]
