"""Cryptographic building blocks: the AES-256-GCM keyring and secret hashing."""
