"""The container of a pod of the fake Kubernetes cluster in `test_kubernetes.py`, run as a local process.

Usage: `python -m programs.k8s_pod` with the environment the fake kubelet resolved from the container spec
(the stage spec in DOGE_SPEC_JSON, the Pipes context, secrets, DOGE_MACHINE_RANK for an indexed Job).

It reads the stage spec as a training process does and talks Dagster Pipes: its log lines (which say what the
spec was, the machine rank and whether the secret came from the cluster's Secret) go to stderr, which the fake
cluster serves as the pod log for `PipesK8sClient` to read. It prints no RESULT-JSON line: its stderr is the
result.
"""

from __future__ import annotations

import os
import sys

from dagster_pipes import open_dagster_pipes

from doge_dagster.launching.spec import LaunchSpec

CLUSTER_SECRET = "from-the-k8s-secret"  # FakeCluster.SECRETS[("doge-s3", "secret_access_key")]


def main(argv: list[str]) -> None:
    if argv:
        raise SystemExit("usage: python -m programs.k8s_pod (everything comes from the environment)")
    spec = LaunchSpec.read("env:DOGE_SPEC_JSON")
    with open_dagster_pipes() as pipes:
        rank = os.environ.get("DOGE_MACHINE_RANK", "-")
        pipes.log.info(f"pod: {spec.asset}[{spec.partition}] {spec.version} rank {rank}")
        pipes.log.info(
            "pod: secret from the cluster matches: " + str(os.environ["AWS_SECRET_ACCESS_KEY"] == CLUSTER_SECRET)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
