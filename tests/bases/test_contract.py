"""The run a method trains in provides every member of the `RunContext` protocol, with the same signatures."""

import inspect

from tokalign.bases.contract import RunContext
from tokalign.runtime.run import Run


def test_run_provides_the_run_context():
    members = {n for n in vars(RunContext) if not n.startswith("_")}
    for name in RunContext.__annotations__:
        assert name in Run.__annotations__, f"Run does not declare {name}"
    for name in members:
        if callable(getattr(RunContext, name)):
            ours, theirs = inspect.signature(getattr(Run, name)), inspect.signature(getattr(RunContext, name))
            assert list(ours.parameters) == list(theirs.parameters), name
