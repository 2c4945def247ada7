"""The `reconcile` subcommands, one module per group; each exposes ``register(subparsers)``.

Commands are thin: parse arguments, call the library, print. Logic lives in
the layers below.
"""
