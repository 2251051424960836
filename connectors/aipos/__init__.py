"""The AI POS connector (bearer key, Stripe-like prefixed ids, cursor lists, signed webhooks)."""

from connectors.aipos.connector import AIPOSConnector

__all__ = ["AIPOSConnector"]
