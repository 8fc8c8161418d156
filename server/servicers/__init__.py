"""gRPC servicers: the only modules that touch both protobuf messages and domain code.

Each module exposes ``async def attach(server, runtime) -> list[str]``.
"""
