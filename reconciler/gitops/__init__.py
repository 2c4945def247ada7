"""GitOps: Git hooks (and later `reconcile watch`) that turn pushes into validated applies."""
