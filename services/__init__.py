"""ackbot: chat messages stored by id and answered by a bot exactly once, over gRPC.

The import package is the services/ folder: `ackbot.store` and `ackbot.bot` are the two
services, `ackbot.common` what both use, `ackbot.cli` the command line for people, and
`ackbot.v1` the code generated from proto/ (see gen/).
"""
