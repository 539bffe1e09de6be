"""The I/O shell of freshrec: Kafka consumers and producers, the worker, the CLI, config.

The only package that imports confluent_kafka or faust.
"""
