"""The central controller: the one place that knows the order of things.

prompts -> rollout workers -> verifier -> (incorrect rollouts) teacher -> group weights
-> learner step -> weight sync -> rollout workers. :mod:`.trainer` runs that loop;
:mod:`.groups` holds its pure per-group steps, :mod:`.stream` the Ray plumbing that
streams groups through them.
"""
