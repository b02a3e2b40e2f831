"""Release assets: release_base, release_instruct, release_reason, one Hub release per released model.

Each is built with `materialize_versioned` like every artifact: its version hashes its recipe section and its
inputs (the model, its evaluation report and the tokenizer), and before anything is built the recorded lineage
of those inputs (the report's, the models', back to the sources) is walked, so a release runs only when every
gate up the chain passed. The build writes the release folder in the Hub's layout (`doge_dagster/release.py`),
validates it for real (loads, generates, the card parses and its model-index equals the report's scores), and
with `releases.<name>.repo_id` pushes it and tags the commit with the artifact version; without one it is a
dry run. The folder is then published to the artifact store like any artifact (manifest last), recording where
it was pushed. A disabled release (`enabled: false`, the default for base) skips its step.

They live in the `release` group: not in `full_pipeline` (unless DOGE_RELEASE_IN_FULL_PIPELINE=true), without
automation conditions, so nothing is released unless a user runs the `release` job or materializes one.
"""

from collections.abc import Iterator

import dagster as dg

from assets.versioned import BuildContext, BuildOutput, materialize_versioned, node_asset_arguments, run_recipe
from doge_dagster.recipes import RecipeFolder
from doge_dagster.release import (
    TOKEN_ENV,
    ReleaseError,
    hub_token,
    push_release,
    release_tag,
    validate_release_folder,
    write_release_folder,
)
from doge_dagster.stages import Release
from resources.artifact_store import ArtifactStoreResource


def build_release_asset(release: Release, recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The release asset of `release`: built in the run's process (copying, loading and pushing need no GPU)."""
    name = release.asset
    chain = recipes.chain
    model_asset, report_asset = chain.stage(release.model_stage).asset, chain.report(release.report).asset
    chat = release.model_stage != chain.root_stage().name

    def build(context: dg.AssetExecutionContext, ctx: BuildContext) -> BuildOutput:
        section = ctx.recipe.section(release.section)
        partition, version = context.partition_key, ctx.planned.version
        try:
            token = hub_token(release, section)  # before any file is written: a push without a token fails here
            folder = write_release_folder(
                ctx.out_dir, release, ctx.recipe, partition, version, ctx.store, ctx.upstream_manifests,
                ctx.upstream_dirs,
            )  # fmt: skip
            validation = validate_release_folder(folder, release, ctx.upstream_manifests[model_asset], chat)
        except ReleaseError as error:
            raise dg.Failure(description=str(error)) from None
        context.log.info(f"{name}[{partition}] version {version}: the release folder validates ({validation})")
        pushed = None
        if token is not None and section.repo_id is not None:
            report = ctx.upstream_manifests[report_asset]
            try:
                pushed = push_release(
                    ctx.out_dir, section.repo_id, section.private, release_tag(partition, version), token,
                    message=f"Release {model_asset} {ctx.upstream_manifests[model_asset].version} ({partition})",
                    description=f"doge-dagster {name} version {version}; gates of {report_asset} version "
                    f"{report.version} and its lineage passed.",
                    log=context.log.info,
                )  # fmt: skip
            except ReleaseError as error:
                raise dg.Failure(description=str(error)) from None
            except Exception as error:  # noqa: BLE001 - any Hub or network error: say where, and that nothing was published
                raise dg.Failure(
                    description=f"pushing {name}[{partition}] version {version} to {section.repo_id} failed: "
                    f"{type(error).__name__}: {error}. Nothing was published to the artifact store; fix the cause "
                    f"(the token in {TOKEN_ENV}, its write access, the network) and materialize {name} again."
                ) from None
        metadata = {
            "model": f"{model_asset}@{ctx.upstream_manifests[model_asset].version}",
            "report": f"{report_asset}@{ctx.upstream_manifests[report_asset].version}",
            "generation_config": folder.generation,
            "card_license": folder.facts.license,
            "card_datasets": folder.facts.datasets,
            "card_base_model": folder.facts.base_model or "",
            "card_tags": folder.facts.tags,
            "card_model_index": [
                {"task": task, "metric": metric, "value": value}
                for (task, metric), value in folder.facts.model_index.items()
            ],
            "validation": validation,
            "dry_run": pushed is None,
            **(pushed.metadata() if pushed else {"pushed": False}),
        }
        ui_metadata = {"model_card": dg.MetadataValue.md(folder.card)}
        if pushed:
            ui_metadata["commit_url"] = dg.MetadataValue.url(pushed.commit_url)
        return BuildOutput(metadata=metadata, ui_metadata=ui_metadata)

    @dg.asset(
        **node_asset_arguments(name, recipes),
        kinds={"huggingface"},
        output_required=False,  # a disabled release yields nothing: no materialization, not a failure
    )
    def release_asset(
        context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource
    ) -> Iterator[dg.MaterializeResult]:
        """Build and validate the release folder, push it when the recipe names a repo, publish it to the store.

        Refused when any artifact up the chain (the report included) failed a blocking check; skipped when the
        recipe's `releases.<name>.enabled` is false.
        """
        section = run_recipe(context, recipes).section(release.section)
        if not section.enabled:
            context.log.info(
                f"{name}[{context.partition_key}]: {release.section}.enabled is false, so nothing is released; set "
                f"it to true in the recipe (or tag the run doge/override/{release.section}.enabled=true)"
            )
            return
        yield materialize_versioned(context, artifact_store, name, lambda ctx: build(context, ctx), recipes)

    return release_asset


def build_release_assets(recipes: RecipeFolder) -> list[dg.AssetsDefinition]:
    """One release asset per release of the recipes' chain."""
    return [build_release_asset(release, recipes) for release in recipes.chain.releases]
