"""The HTTP surface: aiohttp server and routes, inbound checks, OpenAI-style errors,
JSON/SSE answers, and the status and feedback endpoints."""
