"""Study files read strictly: keys given twice, values of the wrong type and unknown keys fail with their line
before anything runs; values are converted to their setting's type as TrainConfig.replace converts them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.config import TrainConfig
from medcad.errors import ConfigError
from medcad.study.spec import load_study


@pytest.fixture
def study(tmp_path: Path):
    """Write a study file beside an (empty) data folder; return a function of its text giving its path."""
    (tmp_path / "data").mkdir()

    def write(text: str) -> Path:
        path = tmp_path / "study.yaml"
        path.write_text(text)
        return path

    return write


def test_key_given_twice_names_both_lines(study) -> None:
    top = study("data: data\ngroup_by: patient\nprotocol: kfold\ngroup_by: none\n")
    with pytest.raises(ConfigError, match=r"study\.yaml lines 2 and 4: key 'group_by' given twice; keep one"):
        load_study(top)
    in_settings = study("data: data\nsettings:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"study\.yaml lines 3 and 5: key 'lr' given twice"):
        load_study(in_settings)
    in_model = study("data: data\nmodels:\n  - name: a\n    lr: 0.1\n  - name: b\n    epochs: 3\n    epochs: 4\n")
    with pytest.raises(ConfigError, match=r"study\.yaml lines 6 and 7: key 'epochs' given twice"):
        load_study(in_model)
    flow = study("data: data\nsettings: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"lines 2 and 2: key 'lr' given twice"):
        load_study(flow)


def test_a_key_may_override_one_merged_in(study) -> None:
    spec = load_study(study("data: data\nsettings: &s {lr: 0.1, epochs: 2}\nmodels:\n  - {<<: *s, name: b, lr: 0.3}\n"))
    assert spec.base.lr == 0.1
    assert spec.models[0].settings == {"lr": 0.3, "epochs": 2}


def test_values_are_converted_to_their_settings_type(study) -> None:
    spec = load_study(
        study(
            "data: data\nholdout: 2e-1\nsettings:\n  lr: 1e-4\n  head_lr: 3\n  epochs: '7'\n  bilateral: 'yes'\n"
            "  oversample: on\n  precision: 16\nmodels:\n  - name: a\n    weight_decay: 1e-5\n    dropout: 0\n"
        )
    )
    base = spec.base
    assert base.lr == 0.0001 and type(base.lr) is float  # YAML 1.1 reads 1e-4 as the text '1e-4'
    assert base.head_lr == 3.0 and type(base.head_lr) is float
    assert base.epochs == 7 and base.bilateral is True and base.oversample is True and base.precision == "16"
    assert base.holdout == 0.2 and type(base.holdout) is float
    own = spec.models[0].settings
    assert own == {"weight_decay": 1e-5, "dropout": 0.0} and type(own["dropout"]) is float
    assert base.replace(**own).weight_decay == 1e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "data: data\nsettings:\n  epochs: 2\n  lr: 1e-4x\n",
            r"study\.yaml line 4: lr: '1e-4x' is not a number \(float expected\)",
        ),
        ("data: data\nsettings:\n  epochs: 2.5\n", r"line 3: epochs: 2\.5 is not a whole number \(int expected\)"),
        ("data: data\nsettings:\n  epochs: yes\n", r"line 3: epochs: True is not a whole number"),
        ("data: data\nsettings:\n  bilateral: maybe\n", r"line 3: bilateral: 'maybe' is not true or false"),
        ("data: data\nsettings:\n  tta: off\n", r"line 3: tta: False is not text \(str expected; quote it"),
        ("data: data\nfolds: three\n", r"line 2: folds: 'three' is not a whole number \(int \| None expected\)"),
        ("data: data\n\nholdout: .nan\n", r"line 3: holdout: nan is not a number"),
        ("data: data\ndomains: endoscopy\n", r"line 2: domains: 'endoscopy' is not a list"),
        ("data: data\nmodels:\n  - name: a\n    dropout: high\n", r"line 4: dropout: 'high' is not a number"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_line_and_type(study, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study(study(text))


def test_unknown_key_is_refused_with_the_nearest_name(study) -> None:
    with pytest.raises(ConfigError, match=r"line 3: unknown settings key 'head_lrr'; did you mean head_lr"):
        load_study(study("data: data\nsettings:\n  head_lrr: 0.1\n"))
    with pytest.raises(ConfigError, match=r"line 4: unknown model key 'epoch'; did you mean epochs"):
        load_study(study("data: data\nmodels:\n  - name: a\n    epoch: 3\n"))
    with pytest.raises(ConfigError, match=r"line 2: unknown study key 'grup_by'; did you mean group_by"):
        load_study(study("data: data\ngrup_by: patient\n"))


def test_config_from_dict_and_replace_convert_and_refuse_the_same_way(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict({"lr": "1e-4", "epochs": 3.0, "bilateral": "true", "folds": "3"})
    assert (cfg.lr, cfg.epochs, cfg.bilateral, cfg.folds) == (0.0001, 3, True, 3)
    assert type(cfg.epochs) is int
    with pytest.raises(ConfigError, match=r"lr: 'abc' is not a number \(float expected\)"):
        TrainConfig().replace(lr="abc")
    with pytest.raises(ConfigError, match=r"dropout: True is not a number"):
        TrainConfig.from_dict({"dropout": True})
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig().replace(lr_rate=0.1)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({**TrainConfig().to_dict(), "head_lr": "5e-3"}))
    assert TrainConfig.load(saved).head_lr == 0.005
    saved.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match=r"config\.json: epochs: 'many' is not a whole number"):
        TrainConfig.load(saved)
    old = TrainConfig.from_saved({"lr": 0.1})  # settings newer than the file keep the older runs' values
    assert (old.freeze_stride, old.tta, old.lr) == (0, "none", 0.1)


def test_replace_sets_none_where_a_setting_may_be_none_and_a_study_null_is_not_given(study) -> None:
    cfg = TrainConfig(task="segment").replace(decoder_channels=None, freeze_stride=None)  # None is a value here
    assert (cfg.decoder_channels, cfg.freeze_stride) == (None, None)
    with pytest.raises(ConfigError, match=r"epochs: None is not a whole number \(int expected\)"):
        TrainConfig().replace(epochs=None)
    spec = load_study(study("data: data\ntask: segment\nsettings:\n  epochs:\n  decoder_channels:\n"))
    assert (spec.base.epochs, spec.base.decoder_channels) == (TrainConfig().epochs, "auto")


FLOATS = ("dropout", "head_lr", "lr", "weight_decay", "label_smoothing", "class_loss_weight", "val_fraction")
INTS = ("image_size", "head_epochs", "epochs", "unfreeze", "batch_size", "patience", "seed", "freeze_stride")
BOOLS = ("bilateral", "class_weights", "oversample")
YAML_BOOLS = {"yes": True, "no": False, "true": True, "False": False, "ON": True, "off": False}


@st.composite
def _float_text(draw: st.DrawFn) -> tuple[str, float]:
    """A number written as YAML would be given it: 1e-4 (text to YAML 1.1), 1.5e-04 (a float), 3 (an int)."""
    mantissa, exponent = draw(st.integers(1, 999)), draw(st.integers(-8, 2))
    text = draw(
        st.sampled_from([f"{mantissa}e{exponent}", f"{mantissa / 100}e{exponent:+03d}", f"{mantissa}E{exponent}"])
    )
    if draw(st.booleans()):
        text = str(mantissa)  # an int for a float
    return text, float(text)


@st.composite
def _settings(draw: st.DrawFn) -> dict[str, tuple[str, object]]:
    """Some settings, each as (YAML text, intended value)."""
    out: dict[str, tuple[str, object]] = {}
    for name in draw(st.sets(st.sampled_from(FLOATS), max_size=4)):
        out[name] = draw(_float_text())
    for name in draw(st.sets(st.sampled_from(INTS), max_size=3)):
        n = draw(st.integers(0, 10_000))
        out[name] = (draw(st.sampled_from([str(n), f"'{n}'"])), n)
    for name in draw(st.sets(st.sampled_from(BOOLS), max_size=2)):
        word = draw(st.sampled_from(sorted(YAML_BOOLS)))
        out[name] = (draw(st.sampled_from([word, f"'{word.lower()}'"])), YAML_BOOLS[word])
    return out


@settings(max_examples=60, deadline=None)
@given(_settings(), st.booleans())
def test_generated_settings_load_as_intended(values: dict[str, tuple[str, object]], in_model: bool) -> None:
    indent, head = ("    ", "models:\n  - name: m\n") if in_model else ("  ", "settings:\n")
    body = "".join(f"{indent}{k}: {text}\n" for k, (text, _) in values.items())
    text = "data: data\n" + (head + body if body or in_model else "")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "s.yaml").write_text(text)
        spec = load_study(Path(tmp) / "s.yaml")
    cfg = spec.base.replace(**spec.models[0].settings) if in_model else spec.base
    assert cfg == TrainConfig().replace(**{k: v for k, (_, v) in values.items()})
    for k, (_, v) in values.items():
        assert getattr(cfg, k) == v and type(getattr(cfg, k)) is type(v)
