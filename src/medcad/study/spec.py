"""The study file (YAML), read strictly: a wrong key, a key given twice or a value of the wrong type is reported
with its line before anything runs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from medcad.config import OPTIMIZERS, SCHEDULES, TrainConfig, coerce_value, run_stages, setting_types, stages_text
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
SETTING_TYPES = setting_types()
MODEL_KEYS = ("name", *SETTING_KEYS)
# The types of the study's own keys; its settings' keys take TrainConfig's types, "models" is checked item by item.
TOP_TYPES = {"name": str, "data": str, "protocol": str, "domains": list[str], "splits": str} | {
    k: SETTING_TYPES[k] for k in ("task", "seed", "group_by", "layout", "pattern", "mask_suffix", "holdout", "folds")
}


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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: yaml.Node, second: yaml.Node) -> None:
        super().__init__(f"key {key!r} given twice")
        self.key, self.lines = key, (first.start_mark.line + 1, second.start_mark.line + 1)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error rather than the last one winning
    (a key may still override one brought in by YAML's merge key `<<`)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node:
                    raise _DuplicateKey(key, first, key_node)
        return super().construct_mapping(node, deep=deep)


def _parse(text: str) -> tuple[yaml.Node | None, object]:
    """The document's node tree (for line numbers) and its data, from one parse."""
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


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
    return next((v for k, v in reversed(node.value) if k.value == key), None)


def _typed(path: Path, node: yaml.MappingNode, data: dict, types: dict[str, object]) -> dict:
    """The values of `data` (the mapping `node`) whose keys are in `types`, each converted to its type; a value
    that cannot be raises ConfigError naming its line. A null (`key:` with no value) is left out: not given."""
    out = {}
    for key_node, _ in node.value:
        name = key_node.value
        if name in types and name in data:
            try:
                if data[name] is None:
                    continue
                if name == "stages":  # a list of mappings, or the compact text
                    out[name] = stages_text(data[name])
                else:
                    out[name] = coerce_value(name, data[name], types[name])
            except ConfigError as e:
                raise ConfigError(f"{_where(path, key_node)}: {e}") from e
    return out


def _check_training(path: Path, node: yaml.Node | None, cfg: TrainConfig) -> None:
    """The optimiser, schedule and stage list of a run: known names, and stages only for a task that has them."""
    try:
        run_stages(cfg)
        for what, value, known in (("optimizer", cfg.optimizer, OPTIMIZERS), ("schedule", cfg.schedule, SCHEDULES)):
            if value not in known:
                raise ConfigError(f"unknown {what} {value!r}; choose {' or '.join(known)}")
    except ConfigError as e:
        raise ConfigError(f"{_where(path, node) if node is not None else path}: {e}") from e


def load_study(path: str | Path, check_data: bool = True) -> StudySpec:
    """Read and check a study file: every key known, none given twice, every value of its setting's type (converted
    as `TrainConfig.replace` does), so that a mistake fails here rather than after training started. Raises
    ConfigError naming the file, line and key at fault.

    Args:
        check_data: the data path must exist (False for `study --plan`, which trains nothing).
    """
    path = Path(path)
    try:
        root, raw = _parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: study file not found") from e
    except _DuplicateKey as e:
        raise ConfigError(f"{path} lines {e.lines[0]} and {e.lines[1]}: key {e.key!r} given twice; keep one") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if root is None:
        raise ConfigError(f"{path}: empty study file")
    _check_mapping(path, root, TOP_KEYS, "study")
    data = _typed(path, root, raw, TOP_TYPES)
    if data.get("data") is None:
        raise ConfigError(f"{path}: missing required key 'data' (the dataset path)")
    data_path = (path.parent / data["data"]).resolve()
    if check_data and not data_path.exists():
        raise ConfigError(
            f"{_where(path, _child(root, 'data'))}: data path {data['data']!r} not found "
            f"(resolved to {data_path}; paths are relative to the study file)"
        )
    protocol = data.get("protocol") or "kfold"
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{_where(path, _child(root, 'protocol'))}: unknown protocol {protocol!r}; "
            f"choose one of {', '.join(PROTOCOLS)}"
        )
    settings = {}
    settings_node = _child(root, "settings")
    if settings_node is not None:
        _check_mapping(path, settings_node, SETTING_KEYS, "settings")
        settings = _typed(path, settings_node, raw["settings"], SETTING_TYPES)
    top = {k: v for k, v in data.items() if k in SETTING_TYPES}
    base = TrainConfig().replace(**{**settings, **top})
    _check_training(path, settings_node if settings_node is not None else root, base)
    if protocol == "holdout" and base.holdout is None:
        base = base.replace(holdout=0.2)  # and no folds (TrainConfig.__post_init__)
    models_node = _child(root, "models")
    raw_models = raw.get("models") or [base.model]
    if not isinstance(raw_models, list):
        raise ConfigError(f"{_where(path, models_node)}: models must be a list")
    models = []
    for i, m in enumerate(raw_models):
        node = models_node.value[i] if models_node is not None else None
        if isinstance(m, str):
            m, own = {}, {"model": m}
        elif isinstance(m, dict) and node is not None:
            _check_mapping(path, node, MODEL_KEYS, "model")
            m = _typed(path, node, m, {"name": str, **SETTING_TYPES})
            own = {k: v for k, v in m.items() if k != "name"}
        else:
            raise ConfigError(f"{_where(path, node) if node else path}: a model is a timm name or a mapping")
        from medcad.models.backbones import check_model_name

        try:
            check_model_name(own.get("model") or base.model)
        except ConfigError as e:
            raise ConfigError(f"{_where(path, node) if node else path}: {e}") from e
        _check_training(path, node, base.replace(**own))
        models.append(ModelSpec(m.get("name") or own.get("model") or base.model, own))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{_where(path, models_node)}: model names must differ; give each a 'name'")
    domains = tuple(data["domains"]) if data.get("domains") else None
    splits = (path.parent / data["splits"]).resolve() if data.get("splits") else None
    return StudySpec(
        path, data.get("name") or path.stem, data_path, base.task, protocol, tuple(models), domains, base, splits
    )
