"""Telling people outside lg that something needs them: webhooks on gate events."""
