"""The engine: the only part of the service that knows how text is generated.

Routes and serving code see the narrow interface in ``base`` (and its errors, which the service
maps to the contract in one place). ``llama`` implements it on llama.cpp: it loads the model
and owns the tokens; ``decode_loop`` runs the steps, asking the ``scheduler`` (pure decisions,
no llama.cpp) what to do, having the ``runner`` call llama_decode, and moving each request on
through its ``grammar_state``; ``cpu_share`` sets the threads of each step.
"""

from service.engine.base import ChatMessage, Engine, FinishReason, Generation, GenerationRequest, GenerationStats

__all__ = ["ChatMessage", "Engine", "FinishReason", "Generation", "GenerationRequest", "GenerationStats"]
