"""A run resumes with the settings it was made with, whatever was left unset and whatever today's defaults are."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medcad.config import STAGED_TASKS, TrainConfig
from medcad.engine.train import _check_resume
from medcad.models.segmentation import DECODER_ARCHS
from medcad.run import Run
from medcad.tasks import TASKS, get_task


@settings(max_examples=80, deadline=None)
@given(
    task=st.sampled_from(sorted(TASKS)),
    arch=st.sampled_from([*DECODER_ARCHS, "attention-unetpp"]),
    stride=st.sampled_from([None, 0, 4, 8, 16]),
    widths=st.sampled_from(["auto", None, "64,32,16,8,8"]),
    stages=st.booleans(),
)
def test_a_run_resumes_with_the_settings_it_was_made_with(task, arch, stride, widths, stages) -> None:
    """`Run.resolve` writes out every setting whose unset value means a default (freeze stride, decoder widths):
    the settled settings settle to themselves, and the same command, or one leaving those options out, resumes the
    saved run with the same values and passes the resume check."""
    mask = "mask" in get_task(task).outputs
    assume(widths != "64,32,16,8,8" or (mask and arch in DECODER_ARCHS))
    assume(not stages or task in STAGED_TASKS)
    cfg = TrainConfig(
        task=task,
        arch=arch,
        freeze_stride=stride,
        decoder_channels=widths,
        stages="1:head:1e-3,2:all:1e-4" if stages else None,
    )
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        made = Run.resolve(cfg, out).cfg
        assert made.freeze_stride is not None and made.decoder_channels != "auto"
        assert Run.resolve(made, out / "again").cfg == made
        (out / "config.json").write_text(json.dumps(made.to_dict()))
        (out / "splits.json").write_text("{}")  # a run that split its data: its settings are checked on resume
        for repeat in (cfg, cfg.replace(freeze_stride=None, decoder_channels="auto")):
            resumed = Run.resolve(repeat, out)
            assert (resumed.cfg.freeze_stride, resumed.cfg.decoder_channels) == (
                made.freeze_stride,
                made.decoder_channels,
            )
            _check_resume(resumed)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, -1.0, 100.0, 100.5, 1e-9])))
def test_nsd_tolerance_is_a_share_of_the_diagonal_above_0_and_at_most_100(value: float) -> None:
    """NSD's tolerance (% of each image's diagonal) is refused where it cannot be one, when the settings are made
    (before anything trains or predicts), naming the setting."""
    import pytest

    from medcad.errors import ConfigError

    if 0 < value <= 100:
        assert TrainConfig(nsd_tolerance=value).nsd_tolerance == value
    else:
        with pytest.raises(ConfigError, match="nsd_tolerance"):
            TrainConfig(nsd_tolerance=value)
