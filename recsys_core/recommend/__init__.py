"""Top-K recommendations with filters, what-if, similar items, and exports of them."""
