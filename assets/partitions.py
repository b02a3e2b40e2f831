"""One static partition per recipe in `recipes/`: every stage asset of a family shares its partition key."""

import dagster as dg

from doge_dagster.recipes import available_recipes

RECIPE_PARTITIONS = dg.StaticPartitionsDefinition(available_recipes())
