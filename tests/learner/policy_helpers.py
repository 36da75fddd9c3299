"""Helpers the learner's policy tests share."""

from __future__ import annotations

from plaudit.learner import Policy, SamplingConfig, Trajectory


def rewarded(policy: Policy, advantages: list[float], sampling: SamplingConfig) -> list[Trajectory]:
    """One sample of ``policy`` per advantage (one prompt), as trajectories with the behaviour
    logprobs and temperature generation returned."""
    prompt = policy.render_prompt("x")
    cands = policy.generate([prompt], n=len(advantages), sampling=sampling)
    return [
        Trajectory(c.prompt_tokens, c.tokens, c.logprobs, a, temperature=c.temperature)
        for c, a in zip(cands, advantages, strict=True)
    ]
