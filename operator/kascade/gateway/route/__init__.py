"""Deciding where a request is answered: request validation, pre-generation rules, the
local first pass, confidence and its dynamic threshold, and the pipeline recipe."""
