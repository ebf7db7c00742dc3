"""oauth2_server: a standards-based OAuth 2.0 authorization server (see README.md)."""

__version__ = "0.1.0"
