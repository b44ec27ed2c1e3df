"""Provider adapters: a provider's response (SDK object or JSON) to a UsageEvent's fields.

Each ``usage_from_*`` is a pure function returning :class:`UsageFields` in spendstream's
token conventions; :class:`~streams.sdk.producer.UsageProducer` and ``SyncUsageProducer``
have ``record_openai(response, team=..., feature=...)`` and the like. Streams are collected
with ``OpenAIStream`` / ``AnthropicStream`` / ``BedrockStream`` and recorded once at the end;
a response or stream without usage raises :class:`UsageMissing`, never records $0.
"""

from streams.sdk.providers.anthropic import AnthropicStream, usage_from_anthropic, usage_from_anthropic_stream
from streams.sdk.providers.bedrock import BedrockStream, usage_from_bedrock, usage_from_bedrock_stream
from streams.sdk.providers.fields import UsageFields, UsageMissing
from streams.sdk.providers.google import usage_from_gemini, usage_from_gemini_stream
from streams.sdk.providers.openai import OpenAIStream, usage_from_openai, usage_from_openai_stream
from streams.sdk.providers.openrouter import usage_from_openrouter, usage_from_openrouter_stream
from streams.sdk.providers.record import ProviderRecording

__all__ = [
    "AnthropicStream", "BedrockStream", "OpenAIStream", "ProviderRecording", "UsageFields", "UsageMissing",
    "usage_from_anthropic", "usage_from_anthropic_stream", "usage_from_bedrock", "usage_from_bedrock_stream",
    "usage_from_gemini", "usage_from_gemini_stream", "usage_from_openai", "usage_from_openai_stream",
    "usage_from_openrouter", "usage_from_openrouter_stream",
]
