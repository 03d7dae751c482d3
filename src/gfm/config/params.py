"""The whole ``params.yaml`` as one frozen dataclass: every section, the checks that span them
(:mod:`gfm.config.validation`) and the look-ups stages share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gfm.base.errors import ParamsError
from gfm.base.schema import NAME_PATTERN, keys_matching, spec
from gfm.config.sections import (
    STORE_KEY_PATTERN,
    AccelerateConfig,
    EvaluateConfig,
    ForecastConfig,
    GeneralizeConfig,
    GenerateConfig,
    LimitsConfig,
    ReportConfig,
    SplitConfig,
    StoreLayoutConfig,
    StoreSpec,
    TrainConfig,
)
from gfm.config.tasks import TaskConfig
from gfm.config.validation import params_problems


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    seed: int = spec(0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    generate: GenerateConfig = dataclasses.field(default_factory=GenerateConfig)
    store: StoreLayoutConfig = dataclasses.field(default_factory=StoreLayoutConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    tasks: dict[str, TaskConfig] = spec({}, nonempty=True, json_schema=keys_matching(NAME_PATTERN))
    stores: dict[str, StoreSpec] = spec({}, nonempty=True, json_schema=keys_matching(STORE_KEY_PATTERN))
    forecast: ForecastConfig = dataclasses.field(default_factory=ForecastConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # each entry's options are checked by its forecaster's own Config (gfm.stages.train.model_problems)
    models: dict[str, Any] = spec({}, doc="name -> {kind: <forecaster>, **its options}", json_schema={
        **keys_matching(NAME_PATTERN),
        "additionalProperties": {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}}})
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    generalize: GeneralizeConfig = dataclasses.field(default_factory=GeneralizeConfig)
    accelerate: AccelerateConfig = dataclasses.field(default_factory=AccelerateConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)

    def _check(self):
        return params_problems(self)

    def store_models(self, key: str) -> list[str]:
        """Forecasters trained on store ``key``: its own ``models`` list, else ``train.models``."""
        st = self.stores[key]
        return list(self.train.models if st.models is None else st.models)

    def lookup_store(self, key: str) -> tuple[StoreSpec, TaskConfig]:
        """The store spec and its task for a store key ``<task>-<optimizer>``."""
        if key not in self.stores:
            raise ParamsError(f"stores.{key}: no such store; expected one of {', '.join(sorted(self.stores))}")
        st = self.stores[key]
        return st, self.tasks[st.task]
