"""Webhook notifications (issue #14 item 3): Standard Webhooks signing (`signing`) and
the delivery loop over the transactional outbox (`delivery`, `storage.outbox`)."""
