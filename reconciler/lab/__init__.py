"""The local lab: the project's embedded default and the fixture of every integration test."""
