"""scope_ray/cli.py: the verbose flag works before and after the subcommand."""

from __future__ import annotations

import pytest

from scope_ray import cli


@pytest.mark.parametrize("argv, verbose", [
    (["train"], False),
    (["-v", "train"], True),
    (["train", "-v", "trainer.total_steps=2"], True),  # bash launch/train.sh -v ...
    (["train", "trainer.total_steps=2", "--verbose"], True),
])
def test_verbose_before_or_after_train(argv, verbose, monkeypatch) -> None:
    import scope_ray.controller.launch as launch
    import scope_ray.log_routing as log_routing

    seen = {}
    monkeypatch.setattr(log_routing, "setup_driver_logging", lambda v: seen.setdefault("verbose", v))
    def train_command(config, overrides, resume) -> int:
        seen["o"] = overrides
        return 0

    monkeypatch.setattr(launch, "train_command", train_command)
    assert cli.main(argv) == 0
    assert seen["verbose"] is verbose
    assert seen["o"] == [a for a in argv if "=" in a]
