"""LuminaGuard: run untrusted pipeline steps in throwaway microVMs, gated by risk policies and approvals."""

__version__ = "0.1.0"
