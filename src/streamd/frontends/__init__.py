"""The front ends: what clients speak to a node.

``native/`` serves the native protocol (streamd_client), ``kinesis/`` the Kinesis-compatible
HTTP API (boto3, the aws CLI); ``admission.py`` holds the connection bounds both listeners share.
Front ends call the engine's public surface and get what they need from the composition root
(``streamd.node``), never through another object's private fields.
"""
