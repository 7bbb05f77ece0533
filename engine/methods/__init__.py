"""Consistency methods, one module each: ``masactrl`` (mutual self-attention from a source),
``consistent_sa`` (StoryDiffusion's Consistent Self-Attention) and ``consistory`` (ConsiStory's
subject-driven shared attention). Every controller counts steps as ``base.StepController`` does.

``generate_set`` (in ``engine.methods.sets``) generates one set of prompts with a set method; it
is loaded lazily so that importing the MasaCtrl processors does not import the pipelines.
"""

from __future__ import annotations

__all__ = ["SetResult", "generate_set"]


def __getattr__(name: str):
    if name in __all__:
        from engine.methods import sets

        return getattr(sets, name)
    raise AttributeError(name)
