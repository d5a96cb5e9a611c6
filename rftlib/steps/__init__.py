"""Study steps: one module per notebook."""
