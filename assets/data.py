"""Data assets: the tokenizer and one asset per mixture of the chain, all partitioned by recipe."""

import dagster as dg

from assets.sources import build_source_assets
from assets.versioned import BuildContext, BuildOutput, materialize_versioned, node_asset_arguments
from doge_dagster.evaluation.report import markdown_table
from doge_dagster.plan import TOKENIZER
from doge_dagster.recipes import RecipeFolder
from doge_dagster.registry import DATASETS
from doge_dagster.stages import Mixture
from resources.artifact_store import ArtifactStoreResource

SOURCE_KEY = {spec.name: dg.AssetKey(spec.asset_name) for spec in DATASETS.values()}
TOKENIZER_CHECKS = ("matches_model_recipe", "think_tokens_not_special")


def _build_tokenizer(build: BuildContext) -> BuildOutput:
    from doge_dagster.data.build import build_tokenizer

    summary = build_tokenizer(build.recipe, build.out_dir)
    return BuildOutput(
        metadata=summary,
        checks={
            # build_tokenizer raises before publishing when the model recipe disagrees
            "matches_model_recipe": (True, f"{summary['vocab_size']} tokens; special ids fit the model recipe"),
            "think_tokens_not_special": (
                not summary["think_tokens_special"],
                "<think> and </think> must not be special tokens",
            ),
        },
    )


def build_tokenizer_asset(recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The `tokenizer` asset of the recipes' partitions."""

    @dg.asset(
        **node_asset_arguments(TOKENIZER.name, recipes, TOKENIZER_CHECKS, deps=list(SOURCE_KEY.values())),
        kinds={"huggingface"},
    )
    def tokenizer(context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource) -> dg.MaterializeResult:
        """Train a byte-level BPE on the recipe's sources (tiny) or load the recipe's tokenizer (real sizes),
        then add the chat template with generation markers and `<think>` tokens that are not special."""
        return materialize_versioned(context, artifact_store, TOKENIZER.name, _build_tokenizer, recipes)

    return tokenizer


def build_mixture_asset(kind: Mixture, recipes: RecipeFolder) -> dg.AssetsDefinition:
    """The `<name>_mixture` asset: sources of the mixture's dataset kind mixed by ratio, train/test splits."""
    name = kind.asset
    sources = sorted({spec.name for spec in DATASETS.values() if spec.kind == kind.dataset_kind})

    def build(build: BuildContext) -> BuildOutput:
        from doge_dagster.data.build import build_mixture, check_mixture

        tokenizer_dir = build.upstream_dirs["tokenizer"]
        stats, preview = build_mixture(
            build.recipe, kind, tokenizer_dir, build.out_dir, build.planned.version, build.log.info
        )
        mixture = build.recipe.section(f"mixtures.{kind.name}")
        from doge_dagster.data.build import load_saved_tokenizer

        vocab = len(load_saved_tokenizer(tokenizer_dir))
        summary = stats.to_dict()
        metadata = {
            "unit": stats.unit,
            "train_rows": stats.train_rows,
            "test_rows": stats.test_rows,
            "total_tokens": sum(source.tokens for source in stats.sources.values()),
            "requested_ratios": summary["requested_ratios"],
            "realised_ratios": {key: round(value, 5) for key, value in summary["realised_ratios"].items()},
            "per_source": summary["sources"],
            "max_ratio_error": round(stats.max_ratio_error(), 6),
        }
        metadata.update({f"ratio/{key}": round(value, 5) for key, value in summary["realised_ratios"].items()})
        return BuildOutput(
            metadata=metadata,
            ui_metadata={"preview": dg.MetadataValue.md(markdown_table(preview, max_cell=300))},
            checks=check_mixture(build.out_dir, kind, vocab, mixture.ratio_tolerance),
        )

    @dg.asset(
        **node_asset_arguments(
            name, recipes, kind.checks, deps=["tokenizer", *(SOURCE_KEY[source] for source in sources)]
        ),
        kinds={"huggingface"},
        # Pretraining, the longest stage, waits on this mixture alone: build it first when steps queue
        # (training stages carry the same priority).
        op_tags={"dagster/priority": str(1 if kind.name == recipes.chain.root_stage().mixture else 0)},
    )
    def mixture_asset(context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource) -> dg.MaterializeResult:
        """Mix the mixture's sources by ratio into a `DatasetDict` written shard by shard; a killed build
        continues from its last shard when materialized again at the same version."""
        return materialize_versioned(context, artifact_store, name, build, recipes, resumable=True)

    return mixture_asset


def build_data_assets(recipes: RecipeFolder) -> list:
    """The source assets, the tokenizer and one asset per mixture of the recipes' chain."""
    mixtures = [build_mixture_asset(kind, recipes) for kind in recipes.chain.mixtures]
    return [*build_source_assets(recipes), build_tokenizer_asset(recipes), *mixtures]
