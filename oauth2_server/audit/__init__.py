"""The audit trail (`oauth2_token_logs`): what is recorded and how it is bounded (`log`,
`bounds`, `risk`), how it is read (`rows`, `query`, `cursors`), how it is made
tamper-evident (`chain`, with the hashed bytes in `canonical`) and how it is kept and
dropped (`partitions`, `janitor`)."""
