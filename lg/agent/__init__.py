"""LLM agent steps and their tools."""
