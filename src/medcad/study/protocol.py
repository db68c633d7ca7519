"""A study's protocol as runs: the experiments it trains (`expand`) and the pairs of them it compares
(`compared_pairs`)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from medcad.errors import ConfigError
from medcad.study.spec import ModelSpec, StudySpec


@dataclass(frozen=True)
class Experiment:
    """One run of a study: a model trained on some domains, possibly continuing from another experiment."""

    name: str
    model: ModelSpec
    train_domains: tuple[str, ...] | None = None
    init: str | None = None  # name of the experiment whose fold models it continues from
    step: str = ""  # "step 1" / "step 2" of a sequential transfer, "combined", "single domain", ...


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_")


def expand(spec: StudySpec, domains: list[str]) -> list[Experiment]:
    """The runs a protocol asks for, in an order where every `init` comes before its user."""
    if spec.protocol in ("holdout", "kfold", "compare"):
        return [Experiment(m.name, m, None, None, "all data") for m in spec.models]
    if len(domains) < 2:
        raise ConfigError(
            f"{spec.path}: protocol {spec.protocol!r} needs two or more domains; the data has "
            f"{domains or 'no domain column'} (set 'domains:' or add a domain column)"
        )
    out: list[Experiment] = []
    for m in spec.models:
        if spec.protocol == "sequential":
            if len(domains) != 2:
                raise ConfigError(f"{spec.path}: sequential transfer needs exactly two domains, got {domains}")
            a, b = domains
            out += [
                Experiment(f"{m.name} | {a}", m, (a,), None, "step 1"),
                Experiment(f"{m.name} | {a} -> {b}", m, (b,), f"{m.name} | {a}", "step 2"),
                Experiment(f"{m.name} | {b}", m, (b,), None, "step 1"),
                Experiment(f"{m.name} | {b} -> {a}", m, (a,), f"{m.name} | {b}", "step 2"),
                Experiment(f"{m.name} | {a} + {b}", m, (a, b), None, "combined"),
            ]
        else:  # combined, cross_domain: each domain alone and all together
            out += [Experiment(f"{m.name} | {d}", m, (d,), None, "single domain") for d in domains]
            out.append(Experiment(f"{m.name} | {' + '.join(domains)}", m, tuple(domains), None, "combined"))
    return out


def compared_pairs(exps: list[Experiment]) -> list[tuple[Experiment, Experiment, str | None]]:
    """The pairs of runs a study compares, each with the domain whose test images it compares them on (None: all):
    models trained the same way (same domains, same step); and the protocol's own question for each model: on the
    target domain, a sequential transfer against that domain alone and against both domains at once; on each domain,
    the combined run against that domain's own run (cross-domain and combined protocols)."""
    by_setting: dict[tuple, list[Experiment]] = {}
    for e in exps:
        by_setting.setdefault((e.train_domains, e.step, e.init is not None), []).append(e)
    pairs: list[tuple[Experiment, Experiment, str | None]] = [
        (a, b, None) for group in by_setting.values() for a, b in itertools.combinations(group, 2)
    ]
    for e in exps:
        same_model = [x for x in exps if x.model.name == e.model.name and x is not e]
        combined = [x for x in same_model if x.step == "combined"]
        if e.init is not None and e.train_domains and len(e.train_domains) == 1:  # a transfer's second step
            (target,) = e.train_domains
            alone = [x for x in same_model if x.init is None and x.train_domains == (target,)]
            pairs += [(e, other, target) for other in alone + combined]
        elif e.step == "single domain" and e.train_domains:
            pairs += [(other, e, e.train_domains[0]) for other in combined]
    return pairs
