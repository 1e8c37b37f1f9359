"""Benchmarks, out of the server package's root: ``streamd bench produce|consume|kinesis``.

``native.py`` measures the native protocol through the client library; ``kinesis.py`` measures
the Kinesis gateway (and, for comparison, kinesalite or kinesis-mock) through boto3, also as
``python -m streamd.bench.kinesis``.
"""
