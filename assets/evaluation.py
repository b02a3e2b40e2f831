"""Evaluation assets: base_eval, instruct_eval, reason_eval, one lighteval report per model.

Each launches `python -m doge_dagster.evaluation REPORT` (base, instruct, reason) on the same `compute` resource
as training (so real sizes evaluate on the GPUs that trained them); the process publishes the report
itself (manifest last) and the asset reports it from the manifest. The gates are blocking checks:
valid scores, no regression beyond `regression_tolerance` on tasks shared with the previous stage's
report, and (reason) the think format rate. A failing instruct_eval gate stops doge_reason_distill.

Automation: each report is `eager` (re-evaluate once its model or the report it compares with has a new
materialization; a re-run on an unchanged model is a cached skip). The training assets have no automation
condition, so no upstream change starts training by itself. The conditions act only while the
`evaluate_new_models` sensor (jobs/automation.py) is running; it is stopped by default.
"""

import dagster as dg

from assets.launching import launch_on_compute
from assets.versioned import BuildContext, BuildOutput, materialize_versioned, node_asset_arguments
from doge_dagster.launching.command import LaunchError
from doge_dagster.recipes import RecipeFolder
from doge_dagster.stages import Report
from doge_dagster.training.validation import validate_launch
from resources.artifact_store import ArtifactStoreResource
from resources.compute import ComputeResource

MARKDOWN_KEYS = ("summary", "score_table", "comparison_table")


def with_markdown(result: dg.MaterializeResult) -> dg.MaterializeResult:
    """The report's markdown texts shown as markdown (fresh and cached materializations alike)."""
    metadata = dict(result.metadata or {})
    for key in MARKDOWN_KEYS:
        value = metadata.get(key)
        text = getattr(value, "value", value)
        if isinstance(text, str):
            metadata[key] = dg.MetadataValue.md(text)
    return dg.MaterializeResult(metadata=metadata, data_version=result.data_version, check_results=result.check_results)


def build_evaluation_asset(report: Report, recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The report asset of `report`, launched on the `compute` resource."""
    name = report.asset

    @dg.asset(
        **node_asset_arguments(name, recipes, report.checks),
        pool="gpu",
        kinds={"pytorch"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def evaluation_asset(
        context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource, compute: ComputeResource
    ) -> dg.MaterializeResult:
        """Evaluate the model with lighteval on the configured compute and publish the report."""

        def launch(build: BuildContext) -> BuildOutput:
            launch_recipe = build.recipe.section(report.section).launch
            try:  # before the spec is written: a bad launch section leaves nothing behind
                validate_launch(launch_recipe, report.section)
            except LaunchError as error:
                raise dg.Failure(description=str(error)) from None
            return launch_on_compute(
                context, artifact_store, compute, build, report.name, name, launch_recipe, "doge_dagster.evaluation"
            )

        return with_markdown(
            materialize_versioned(context, artifact_store, name, launch, recipes, publishes_itself=True)
        )

    return evaluation_asset


def build_evaluation_assets(recipes: RecipeFolder) -> list[dg.AssetsDefinition]:
    """One report asset per report of the recipes' chain."""
    return [build_evaluation_asset(report, recipes) for report in recipes.chain.reports]
