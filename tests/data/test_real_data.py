"""The data layer on the real datasets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import BUSI, KVASIR_SEG, require
from medcad.cli import app

runner = CliRunner()


def test_busi_inspect(tmp_path) -> None:
    res = runner.invoke(app, ["data", "inspect", str(require(BUSI)), "--json", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["n_images"] == 780
    assert s["labels"] == {"benign": 437, "malignant": 210, "normal": 133}
    assert s["n_masks"] == 780 and s["n_multi_masks"] == 17
    assert s["n_groups"] is None
    # the written manifest is itself a valid dataset
    res2 = runner.invoke(app, ["data", "inspect", str(tmp_path / "m.csv"), "--json", "--out", str(tmp_path / "2.csv")])
    assert json.loads(res2.stdout)["labels"] == s["labels"]


def test_kvasir_seg_inspect(tmp_path) -> None:
    res = runner.invoke(app, ["data", "inspect", str(require(KVASIR_SEG)), "--json", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["n_images"], s["n_masks"], s["n_boxes"]) == (1000, 1000, 1071)
    assert s["layout"] == "images-masks"


@pytest.mark.heavy
def test_busi_audit_finds_cross_label_duplicates() -> None:
    res = runner.invoke(app, ["data", "audit", str(require(BUSI)), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert ["benign/benign (433).jpg", "malignant/malignant (145).jpg"] in r["cross_label_duplicates"]
    assert len(r["near_duplicates"]) > 50
    assert not r["unreadable"] and not r["mask_size_mismatch"]
