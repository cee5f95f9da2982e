"""`atom data`: raw documents -> curated, deduplicated, decontaminated Parquet shards (on datatrove).

Config: `CurateConfig` (configs/data/*.yaml). Outputs in run.dir: curated/*.parquet, manifest.json,
excluded/<stage>/, quarantine/, reports/. See pipeline.py for the phases.
"""

from core.stage import Stage
from data_pipeline.curate.config import CurateConfig
from data_pipeline.curate.pipeline import plan, run, stage_inputs

STAGE = Stage(
    name="data",
    summary="curate raw text into deduplicated, decontaminated Parquet shards",
    config_cls=CurateConfig,
    plan=plan,
    run=run,
    inputs=stage_inputs,
)

__all__ = ["STAGE", "CurateConfig", "plan", "run"]
