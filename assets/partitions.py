"""One static partition per recipe of the code location's recipes folder: every asset of a family shares its key."""

import dagster as dg

from doge_dagster.recipes import RecipeFolder


def recipe_partitions(recipes: RecipeFolder) -> dg.StaticPartitionsDefinition:
    """A partition per recipe file (tiny first)."""
    return dg.StaticPartitionsDefinition(recipes.names())
