"""Full-ranking metrics and per-user/segment breakdowns. Ranks any scorer; imports only `data`."""
