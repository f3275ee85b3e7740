"""The engine: the only part of the service that knows how text is generated.

Routes and serving code see the narrow interface in ``base``; ``llama`` implements it on
llama.cpp and is the only module that imports ``llama_cpp``.
"""

from service.engine.base import ChatMessage, Engine, FinishReason, Generation, GenerationRequest, GenerationStats

__all__ = ["ChatMessage", "Engine", "FinishReason", "Generation", "GenerationRequest", "GenerationStats"]
