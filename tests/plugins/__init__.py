"""Code a user would keep in their own package, for tests that extend the pipeline (see `second_sft`)."""
