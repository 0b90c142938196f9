"""The convex heads: one module per architecture, each a feature map plus an estimator."""
