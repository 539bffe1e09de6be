"""Feature state and its math (decay, sessions, embeddings, item stats) plus `store`.

Pure functions and small value types; `profiles.store` is the only module that talks to
Redis/Feast. Nothing here imports Kafka or reads the environment.
"""
