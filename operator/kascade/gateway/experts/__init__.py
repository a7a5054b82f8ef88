"""Calling cloud experts: escalation (reserve → throttle → call → settle), provider
adapters (OpenAI, Azure OpenAI, Anthropic) and circuit breakers."""
