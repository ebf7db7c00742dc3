"""The audit trail (`oauth2_token_logs`): what is recorded and how it is bounded (`log`,
`bounds`, `risk`), how it is read (`query`, `cursors`), how it is made tamper-evident
(`chain`) and how it is kept and dropped (`partitions`, `janitor`)."""
