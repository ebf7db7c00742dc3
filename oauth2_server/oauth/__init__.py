"""The OAuth layer: Authlib's grants and endpoints adapted to Starlette and our storage."""
