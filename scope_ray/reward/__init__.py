r"""Answer verifier: the reward signal for SCOPE training.

>>> from scope_ray.reward import verify
>>> verify(r"... so the answer is \boxed{42}.", "42").reason
'correct'

Model text is treated as hostile: it is never evaluated as code, the caller
does only bounded string work on it, and every math comparison runs in a
worker process that is killed when it exceeds its timeout.
"""

from scope_ray.reward.api import close_default_pool, get_default_pool, verify, verify_batch
from scope_ray.reward.extract import Extraction, extract_boxed
from scope_ray.reward.pool import VerifierPool
from scope_ray.reward.result import REASONS, Reason, VerifyResult

__all__ = [
    "REASONS",
    "Extraction",
    "Reason",
    "VerifierPool",
    "VerifyResult",
    "close_default_pool",
    "extract_boxed",
    "get_default_pool",
    "verify",
    "verify_batch",
]
