"""The study file (YAML): parsed with line numbers so that a wrong key or value is reported where it is."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from medcad.config import TrainConfig
from medcad.errors import ConfigError

PROTOCOLS = ("holdout", "kfold", "compare", "sequential", "combined", "cross_domain")
TOP_KEYS = (
    "name",
    "data",
    "task",
    "protocol",
    "models",
    "domains",
    "folds",
    "holdout",
    "seed",
    "group_by",
    "settings",
    "layout",
    "pattern",
    "mask_suffix",
    "splits",
)
SETTING_KEYS = tuple(f.name for f in fields(TrainConfig))
MODEL_KEYS = ("name", *SETTING_KEYS)


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: a display name and its settings (overriding the study's)."""

    name: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    path: Path
    name: str
    data: Path
    task: str
    protocol: str
    models: tuple[ModelSpec, ...]
    domains: tuple[str, ...] | None
    base: TrainConfig
    splits: Path | None = None


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path} line {node.start_mark.line + 1}"


def _unknown(path: Path, key: yaml.Node, known: tuple[str, ...], what: str) -> ConfigError:
    close = difflib.get_close_matches(str(key.value), known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"{_where(path, key)}: unknown {what} key {key.value!r}{hint}")


def _check_mapping(path: Path, node: yaml.Node, known: tuple[str, ...], what: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node)}: {what} must be a mapping of key: value")
    for key, _ in node.value:
        if key.value not in known:
            raise _unknown(path, key, known, what)


def _child(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    return next((v for k, v in node.value if k.value == key), None)


def _settings(path: Path, node: yaml.Node | None, data: dict, base: TrainConfig) -> TrainConfig:
    try:
        return base.replace(**data)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{_where(path, node) if node is not None else path}: {e}") from e


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file. Raises ConfigError naming the file, line and key at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: study file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if root is None:
        raise ConfigError(f"{path}: empty study file")
    _check_mapping(path, root, TOP_KEYS, "study")
    for req in ("data",):
        if req not in data:
            raise ConfigError(f"{path}: missing required key {req!r} (the dataset path)")
    data_path = (path.parent / str(data["data"])).resolve()
    if not data_path.exists():
        raise ConfigError(
            f"{_where(path, _child(root, 'data'))}: data path {data['data']!r} not found "
            f"(resolved to {data_path}; paths are relative to the study file)"
        )
    protocol = str(data.get("protocol", "kfold"))
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{_where(path, _child(root, 'protocol'))}: unknown protocol {protocol!r}; "
            f"choose one of {', '.join(PROTOCOLS)}"
        )
    settings_node = _child(root, "settings")
    if settings_node is not None:
        _check_mapping(path, settings_node, SETTING_KEYS, "settings")
    top = {k: data[k] for k in ("task", "seed", "group_by", "layout", "pattern", "mask_suffix") if k in data}
    if "holdout" in data:
        top.update(holdout=float(data["holdout"]), folds=None)
    elif "folds" in data:
        top["folds"] = int(data["folds"])
    base = _settings(path, settings_node, {**(data.get("settings") or {}), **top}, TrainConfig())
    if protocol == "holdout" and base.holdout is None:
        base = TrainConfig.from_dict({**base.to_dict(), "holdout": 0.2, "folds": None})
    models_node = _child(root, "models")
    raw_models = data.get("models") or [base.model]
    if not isinstance(raw_models, list):
        raise ConfigError(f"{_where(path, models_node)}: models must be a list")
    models = []
    for i, m in enumerate(raw_models):
        node = models_node.value[i] if models_node is not None else None
        if isinstance(m, str):
            m = {"model": m}
        elif isinstance(m, dict) and node is not None:
            _check_mapping(path, node, MODEL_KEYS, "model")
        else:
            raise ConfigError(f"{_where(path, node) if node else path}: a model is a timm name or a mapping")
        settings = {k: v for k, v in m.items() if k != "name"}
        _settings(path, node, settings, base)  # check now, fail before any training
        from medcad.models.backbones import check_model_name

        try:
            check_model_name(settings.get("model", base.model))
        except ConfigError as e:
            raise ConfigError(f"{_where(path, node) if node else path}: {e}") from e
        models.append(ModelSpec(str(m.get("name") or settings.get("model", base.model)), settings))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{_where(path, models_node)}: model names must differ; give each a 'name'")
    domains = tuple(str(d) for d in data["domains"]) if data.get("domains") else None
    splits = (path.parent / str(data["splits"])).resolve() if data.get("splits") else None
    return StudySpec(
        path, str(data.get("name") or path.stem), data_path, base.task, protocol, tuple(models), domains, base, splits
    )
