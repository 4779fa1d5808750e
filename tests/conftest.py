"""Session-wide fixtures shared by the Ray / vLLM tests.

One local Ray session and one tiny model directory per test session: starting Ray
(~3 s) and vLLM engines (~3-7 s each) are the expensive parts of these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init TinyModelSpec student (seed 0) saved as an HF dir vLLM serves."""
    from scope_ray.bootstrap.models import TinyModelSpec, init_model, save_model_dir

    return save_model_dir(init_model(TinyModelSpec(), seed=0), tmp_path_factory.mktemp("tiny_student"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session (4 logical CPUs: actors' num_cpus are a
    scheduling budget here, not cores), no dashboard."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        # Ray 2.60 enables token authentication by default; a throwaway local cluster
        # needs none, and the variable must be set before ray.init().
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def tiny_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """The reduced bootstrap preset (task files, tiny teacher and student), built once per
    session in a private cache. Returns ``BootstrapArtifacts``."""
    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap

    return bootstrap(BootstrapOptions.tiny_for_tests(), tmp_path_factory.mktemp("bootstrap_cache"))
