"""plaudit.faces.simulated: the embedded default face, a simulated audience whose history is
the VADER tweets corpus (MIT, see NOTICE-vader-tweets.txt)."""

from ._audience import Appeal, AudienceModel
from ._corpus import CorpusPost, load_corpus
from ._face import PenaltyWeights, SimulatedConfig, SimulatedFace

__all__: list[str] = [
    "Appeal",
    "AudienceModel",
    "CorpusPost",
    "PenaltyWeights",
    "SimulatedConfig",
    "SimulatedFace",
    "load_corpus",
]
